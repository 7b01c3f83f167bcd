COMMON="--data @runs/rd/data.txt --clip-method fixed --clip-low -45 --clip-high 8 --entropy-model factorized --mse-weight 1 --ssim-weight 0 --patch-size 128 --stride 64 --batch-size 8 --log-interval 50 --no-tensorboard --seed 0 --variant gdn --base-channels 64 --lr 5e-4 --prior-lr-mult 10 --warmup-steps 200 --val-interval 1000"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
