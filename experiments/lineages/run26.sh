#!/usr/bin/env bash
# Run 26: run 22's recipe with WikiText locality. Run 17's last checkpoint (experiments/lineages/run17.sh, 80
# CPU-minutes) goes on with its Adam state and run 22's settings, plus one WikiText passage per problem as a further
# locality input (--loc-text; whole-answer locality is lost at near-tie tokens of generic text, which the NQ questions
# hold few of), for the rest of the 180 CPU-minutes:
# `MAX_MINUTES=<180 minus run 17's summary minutes> bash experiments/lineages/run26.sh` (the same command resumes
# from $OUT's last checkpoint: then MAX_MINUTES=<what is left>). Run from the repository root.
set -euo pipefail
OUT=${OUT:-runs/run26}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
mkdir -p "$OUT"
for f in projection_bases.npz whitening_maps.npz; do [ -e "$OUT/$f" ] || cp runs/run17/$f "$OUT/$f"; done
source experiments/lineages/train_common.sh
lineage_train --patience 2000 --c-loc 8.0 --c-loc-batched 4.0 --loc-len 32 --loc-answer-len 16 \
  --loc-text ../shared/data/wikitext/wiki.test.raw --loc-text-rows 1 \
  --init-from runs/run17 --init-which latest --init-optimizer true
