source runs/g/common.sh
.venv/bin/python -m training $COMMON --latent-channels 96 --stages 3 --lmbda 1000 --steps 18000 --time-limit 100 --out-dir runs/g/b --overwrite > runs/g/b.log 2>&1
