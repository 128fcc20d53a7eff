#!/usr/bin/env bash
# Run 24: one training lineage from scratch with run 22's settings from the first step (locality inputs up to 32
# tokens with answers up to 16, c_loc 8, c_loc_batched 4), otherwise run 17's command (run 8's + whitening 8 and
# edit_lr_init 1e-3). The same command resumes from the last checkpoint in $OUT, so a lineage split over sessions
# is `MAX_MINUTES=<180 minus the minutes in $OUT/summary.json> bash experiments/lineages/run24.sh`.
# Run from the repository root; ../shared/data holds the train splits and the zsRE dev file.
set -euo pipefail
OUT=${OUT:-runs/run24}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
source experiments/lineages/train_common.sh
lineage_train --patience 2000 --c-loc 8.0 --c-loc-batched 4.0 --loc-len 32 --loc-answer-len 16
