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
# EVAL=0 trains only (e.g. to probe test-time settings on dev records before the evaluation).
# The same recipe on other folders, with flags added to both parts (lineage27.sh: blocks 21-23):
#   P1=runs/run27a P2=runs/run27 TAG=run27 LINEAGE_ARGS="--edit-first-block 21" TOTAL_MINUTES=180 bash ...
set -euo pipefail
P1=${P1:-runs/run17}  # part 1 (run 17's recipe)
P2=${P2:-runs/run26}  # part 2 (run 26's recipe), from part 1's last checkpoint
TAG=${TAG:-run26}  # the evaluation's file names: experiments/results/${TAG}_eval_*.json
ARGS=${LINEAGE_ARGS:-}  # flags added to both parts' commands
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
L17=$(left 80 "$(used "$P1")")
# shellcheck disable=SC2086  # ARGS: several flags
! more "$L17" || OUT=$P1 MAX_MINUTES=$L17 bash experiments/lineages/run17.sh $ARGS
R17=$(used "$P1")
L26=$(left "$(left "$TOTAL" "$R17")" "$(used "$P2")")
echo "lineage ($P1 -> $P2): part 1 used $R17 CPU-minutes; part 2 gets $(left "$TOTAL" "$R17") in all, $L26 of them now"
# shellcheck disable=SC2086
! more "$L26" || OUT=$P2 FROM=$P1 MAX_MINUTES=$L26 bash experiments/lineages/run26.sh $ARGS
[ "${EVAL:-1}" = 0 ] || bash experiments/lineages/eval_lineage.sh "$P2" "$TAG"  # EVAL=0: train only
