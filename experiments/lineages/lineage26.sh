#!/usr/bin/env bash
# The run 17 -> 26 lineage and its evaluation in one invocation, for a machine that keeps nothing between sessions:
# run 17 (run17.sh, at most 80 CPU-minutes; it stops early at ~70 on a fast machine), then run 26 (run26.sh, starting
# from run 17's last checkpoint and hidden cache) for the rest of TOTAL_MINUTES, then eval_lineage.sh on run 26's last
# checkpoint. Usage (from the repository root):
#   TOTAL_MINUTES=140 bash experiments/lineages/lineage26.sh
# TOTAL_MINUTES is at most 180 (the issue's three hours); less where the session cannot hold the training and the
# ~30-minute evaluation. Killed, or run again with a larger TOTAL_MINUTES, the same command goes on: each part
# resumes from its last checkpoint with its allotment (run 17: 80; run 26: TOTAL less run 17's) less the minutes it
# has used (the larger of its summary's and its last checkpoint's minutes_total); a part with under half a minute
# left is done. (Session 27: TOTAL_MINUTES=150 trained and evaluated; TOTAL_MINUTES=180 adds run 26's last 30.)
set -euo pipefail
TOTAL=${TOTAL_MINUTES:?set TOTAL_MINUTES, the CPU-minutes of the whole lineage (at most 180)}
PY=.venv/bin/python
used() {  # minutes a run folder has used: the larger of its summary's and its last checkpoint's total, else 0
  $PY - "$1" <<'PY'
import json, sys
from pathlib import Path
from mend_jax.checkpoints import CheckpointError, read_meta
run = Path(sys.argv[1])
totals = [0.0]
if (run / "summary.json").exists():
    totals.append(json.loads((run / "summary.json").read_text())["minutes_total"])
try:
    totals.append(read_meta(run / "checkpoints", "latest")[1].get("minutes_total", 0.0))
except CheckpointError:
    pass
print(max(totals))
PY
}
left() { $PY -c "print(round($1 - $2, 1))"; }
more() { $PY -c "import sys; sys.exit(0 if $1 >= 0.5 else 1)"; }  # at least half a minute left
L17=$(left 80 "$(used runs/run17)")
! more "$L17" || MAX_MINUTES=$L17 bash experiments/lineages/run17.sh
R17=$(used runs/run17)
L26=$(left "$(left "$TOTAL" "$R17")" "$(used runs/run26)")
echo "lineage26: run 17 used $R17 CPU-minutes; run 26 gets $(left "$TOTAL" "$R17") in all, $L26 of them now"
! more "$L26" || MAX_MINUTES=$L26 bash experiments/lineages/run26.sh
bash experiments/lineages/eval_lineage.sh runs/run26 run26
