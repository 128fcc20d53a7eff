#!/usr/bin/env bash
# Run 25: the run 24 lineage finished with a learning-rate cool-down. Run 24 early-stopped at step 3200 after 105.3
# CPU-minutes on a noisy dev loss (48 problems); here its last checkpoint goes on with its Adam state and its
# settings for the 74.7 minutes left of the three hours, both learning rates falling linearly to 0 over 2400 steps
# (--lr-decay-steps; no early stop), so that the editor evaluated is a settled one, not the last noisy batch's.
# `MAX_MINUTES=74.6 bash experiments/lineages/run25.sh` (resumes from $OUT's last checkpoint if killed: then
# MAX_MINUTES=<74.6 minus the minutes in $OUT/summary.json>). Run from the repository root.
set -euo pipefail
OUT=${OUT:-runs/run25}
SRC=${SRC:-runs/run24}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
# projection/whitening files and the hidden cache of the same inputs from run 24 (counted there)
mkdir -p "$OUT"
for f in projection_bases.npz whitening_maps.npz; do [ -e "$OUT/$f" ] || cp "$SRC/$f" "$OUT/$f"; done
[ -e "$OUT/hidden_cache" ] || cp -r "$SRC/hidden_cache" "$OUT/hidden_cache"
source experiments/lineages/train_common.sh
lineage_train --c-loc 8.0 --c-loc-batched 4.0 --loc-len 32 --loc-answer-len 16 \
  --init-from "$SRC" --init-which latest --init-optimizer true \
  --steps 2400 --lr-decay-steps 2400 --patience 1000000
