#!/usr/bin/env bash
# Run 22: run 17's last checkpoint with its Adam state continued with run 24's settings (locality answers up to
# 16 tokens, c_loc 8, c_loc_batched 4, patience 2000) for the rest of the 180 CPU-minutes (run 22 was evaluated at
# step 2400, 99.3 minutes): `MAX_MINUTES=<180 minus run 17's summary minutes> bash experiments/lineages/run22.sh`.
# Run from the repository root; ../shared/data holds the train splits and the zsRE dev file. Arguments are added
# to the command (run26.sh: run 22's recipe with one more option).
set -euo pipefail
OUT=${OUT:-runs/run22}
FROM=${FROM:-runs/run17}  # the first part of the lineage, whose last checkpoint this part goes on from
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
# the projection and whitening files the editor was trained with come from run 17 ($FROM); so does the hidden cache as a
# start: it is keyed by token sequence and checked against the base weights, so only the inputs run 17 did not
# have (the longer locality inputs, text passages) are computed
mkdir -p "$OUT"
for f in projection_bases.npz whitening_maps.npz; do [ -e "$OUT/$f" ] || cp "$FROM/$f" "$OUT/$f"; done
[ -e "$OUT/hidden_cache" ] || [ ! -e "$FROM/hidden_cache/meta.json" ] || cp -r "$FROM/hidden_cache" "$OUT/hidden_cache"
source experiments/lineages/train_common.sh
lineage_train --patience 2000 --c-loc 8.0 --c-loc-batched 4.0 --loc-len 32 --loc-answer-len 16 \
  --init-from "$FROM" --init-which latest --init-optimizer true "$@"
