#!/usr/bin/env bash
# The run 17 -> 26 lineage and its evaluation in one invocation, for a machine that keeps nothing between sessions:
# run 17 (at most 80 CPU-minutes, it stops early at ~70), then run 26 for the rest of TOTAL_MINUTES (its minutes
# counted from run 17's summary), then experiments/lineages/eval_lineage.sh on run 26's last checkpoint.
# Usage (from the repository root): TOTAL_MINUTES=132 bash experiments/lineages/lineage26.sh
# TOTAL_MINUTES is at most 180 (the three hours); less where the session cannot hold training and evaluation.
set -euo pipefail
TOTAL=${TOTAL_MINUTES:?set TOTAL_MINUTES, the CPU-minutes of the whole lineage (at most 180)}
PY=.venv/bin/python
[ -e runs/run17/summary.json ] || MAX_MINUTES=80 bash experiments/lineages/run17.sh
USED=$($PY -c "import json; print(json.load(open('runs/run17/summary.json'))['minutes_total'])")
LEFT=$($PY -c "print(round($TOTAL - $USED, 1))")
echo "lineage26: run 17 used $USED CPU-minutes; run 26 gets $LEFT"
MAX_MINUTES=$LEFT bash experiments/lineages/run26.sh
bash experiments/lineages/eval_lineage.sh runs/run26 run26
