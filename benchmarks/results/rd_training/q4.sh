source runs/g/common.sh
.venv/bin/python -m training $COMMON --latent-channels 96 --stages 3 --lmbda 10000 --init-from runs/g/q3 --warmup-steps 50 --steps 6000 --time-limit 24 --out-dir runs/g/q4 --overwrite > runs/g/q4.log 2>&1
