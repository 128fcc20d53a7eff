#!/usr/bin/env bash
# Run 24: one training lineage from scratch with run 22's settings from the first step (locality inputs up to 32
# tokens with answers up to 16, c_loc 8, c_loc_batched 4), otherwise run 17's command (run 8's + whitening 8 and
# edit_lr_init 1e-3). The same command resumes from the last checkpoint in $OUT, so a lineage split over sessions
# is `MAX_MINUTES=<180 minus the minutes in $OUT/summary.json> bash experiments/lineages/run24.sh`.
# Run from the repository root; ../shared/data holds the train splits and the zsRE dev file.
set -euo pipefail
OUT=${OUT:-runs/run24}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
exec .venv/bin/mend-jax train --model smollm2-135m --edit-blocks 3 --data zsre,counterfact \
  --train-file ../shared/data/zsre/zsre_mend_train-1k.json,../shared/data/counterfact/counterfact-train.json \
  --repeats 5,1 --train-loc own \
  --dev-data zsre --dev-file ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --dev-records 0:500 \
  --val-every 200 --val-size 48 --steps 20000 --patience 2000 --ckpt-every 50 \
  --rank 512 --n-hidden 1 --combine true --shared true --edits-per-step 8 --edits-per-problem 1 \
  --schedule 8x1,1x10 --edit-loss-on both --loc-loss-on all --c-flip 0.0 \
  --lr 1e-5 --lr-lr 1e-5 --edit-lr-init 1e-3 --edit-lr-k-power false --edit-steps 2 --factor-positions all \
  --c-edit 0.1 --c-loc 8.0 --c-loc-batched 4.0 --grad-clip 100.0 \
  --seq-len 24 --target-len 8 --loc-len 32 --loc-answer-len 16 \
  --hidden-cache true --project-out 16 --projection-inputs 1024 --whiten 8.0 \
  --base-dtype float32 --seed 0 --max-minutes "$MAX_MINUTES" --out "$OUT"
