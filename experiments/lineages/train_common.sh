# Sourced by the lineage scripts: the flags runs 17, 22 and 24 share (run 8's command + whitening 8 and
# edit_lr_init 1e-3). `lineage_train FLAGS...` adds a run's own flags and the time limit / output folder.
lineage_train() {
  source scripts/jemalloc.sh  # jemalloc where installed: 1.26x a step on the CPU machine (see that file)
  exec .venv/bin/mend-jax train --model smollm2-135m --edit-blocks 3 --data zsre,counterfact \
    --train-file ../shared/data/zsre/zsre_mend_train-1k.json,../shared/data/counterfact/counterfact-train.json \
    --repeats 5,1 --train-loc own \
    --dev-data zsre --dev-file ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --dev-records 0:500 \
    --val-every 200 --val-size 48 --steps 20000 --ckpt-every 50 \
    --rank 512 --n-hidden 1 --combine true --shared true --edits-per-step 8 --edits-per-problem 1 \
    --schedule 8x1,1x10 --edit-loss-on both --loc-loss-on all --c-flip 0.0 \
    --lr 1e-5 --lr-lr 1e-5 --edit-lr-init 1e-3 --edit-lr-k-power false --edit-steps 2 --factor-positions all \
    --c-edit 0.1 --grad-clip 100.0 --seq-len 24 --target-len 8 \
    --hidden-cache true --project-out 16 --projection-inputs 1024 --whiten 8.0 \
    --base-dtype float32 --seed 0 "$@" --max-minutes "$MAX_MINUTES" --out "$OUT"
}
