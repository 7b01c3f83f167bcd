source runs/g/common.sh
.venv/bin/python -m training $COMMON --latent-channels 96 --stages 3 --lmbda 4000 --init-from /tmp/b_best_11k.pt --warmup-steps 50 --steps 6000 --time-limit 27 --out-dir runs/g/q3 --overwrite > runs/g/q3.log 2>&1
