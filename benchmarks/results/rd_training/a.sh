source runs/g/common.sh
.venv/bin/python -m training $COMMON --latent-channels 96 --stages 4 --lmbda 1000 --steps 15000 --time-limit 100 --out-dir runs/g/a --overwrite > runs/g/a.log 2>&1
