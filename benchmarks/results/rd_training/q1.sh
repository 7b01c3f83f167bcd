while [ ! -f runs/g/b/summary.json ]; do sleep 10; done
source runs/g/common.sh
.venv/bin/python -m training $COMMON --latent-channels 96 --stages 3 --lmbda 250 --init-from runs/g/b --warmup-steps 50 --steps 6000 --time-limit 26 --out-dir runs/g/q1 --overwrite > runs/g/q1.log 2>&1
