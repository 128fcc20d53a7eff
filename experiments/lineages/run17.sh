#!/usr/bin/env bash
# Run 17 (first part of the run 17 -> 22 lineage, the editor of record up to session 22): run 8's command + whitening 8
# and edit_lr_init 1e-3, 80 CPU-minutes: `MAX_MINUTES=80 bash experiments/lineages/run17.sh`, then run22.sh.
# Run from the repository root; ../shared/data holds the train splits and the zsRE dev file.
set -euo pipefail
OUT=${OUT:-runs/run17}
MAX_MINUTES=${MAX_MINUTES:?set MAX_MINUTES, the CPU-minutes this invocation may use}
source experiments/lineages/train_common.sh
lineage_train --patience 1000 --c-loc 4.0 --loc-len 24 "$@"  # arguments: added to the command
