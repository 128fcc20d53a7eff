#!/usr/bin/env bash
# Run 22: run 17's last checkpoint with its Adam state continued with run 24's settings (locality answers up to
# 16 tokens, c_loc 8, c_loc_batched 4, patience 2000) for the rest of the 180 CPU-minutes (run 22 was evaluated at
# step 2400, 99.3 minutes): `MAX_MINUTES=<180 minus run 17's summary minutes> bash experiments/lineages/run22.sh`.
# Run from the repository root; ../shared/data holds the train splits and the zsRE dev file.
set -euo pipefail
OUT=${OUT:-runs/run22}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
# the projection and whitening files the editor was trained with come from run 17 (the hidden cache is rebuilt:
# the locality inputs are longer)
mkdir -p "$OUT"
for f in projection_bases.npz whitening_maps.npz; do [ -e "$OUT/$f" ] || cp runs/run17/$f "$OUT/$f"; done
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
  --init-from runs/run17 --init-which latest --init-optimizer true --base-dtype float32 --seed 0 --max-minutes "$MAX_MINUTES" --out "$OUT"
