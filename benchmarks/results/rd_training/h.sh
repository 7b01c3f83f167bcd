source runs/g/common.sh
.venv/bin/python -m training $COMMON --entropy-model hyperprior --latent-channels 96 --stages 3 --lmbda 1000 --steps 14000 --time-limit 75 --out-dir runs/g/h --overwrite > runs/g/h.log 2>&1
