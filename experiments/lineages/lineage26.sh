#!/usr/bin/env bash
# The run 17 -> 26 lineage and its evaluation in one invocation, for a machine that keeps nothing between sessions:
# run 17 (run17.sh, at most 80 CPU-minutes; it stops early at ~70 on a fast machine), then run 26 (run26.sh, starting
# from run 17's last checkpoint and hidden cache) for the rest of TOTAL_MINUTES, then eval_lineage.sh on run 26's last
# checkpoint. Usage (from the repository root):
#   TOTAL_MINUTES=140 bash experiments/lineages/lineage26.sh
# TOTAL_MINUTES is at most 180 (the issue's three hours); less where the session cannot hold the training and the
# ~30-minute evaluation. Killed, the same command goes on: a part with a summary.json is done; one with only
# checkpoints resumes with its limit less the minutes_total of its last checkpoint (what it has used so far).
set -euo pipefail
TOTAL=${TOTAL_MINUTES:?set TOTAL_MINUTES, the CPU-minutes of the whole lineage (at most 180)}
PY=.venv/bin/python
used() {  # minutes a run folder has used: its summary's total if it finished, else its last checkpoint's, else 0
  $PY - "$1" <<'PY'
import json, sys
from pathlib import Path
from mend_jax.checkpoints import CheckpointError, read_meta
run = Path(sys.argv[1])
if (run / "summary.json").exists():
    print(json.loads((run / "summary.json").read_text())["minutes_total"])
else:
    try:
        print(read_meta(run / "checkpoints", "latest")[1].get("minutes_total", 0.0))
    except CheckpointError:
        print(0.0)
PY
}
left() { $PY -c "print(round($1 - $2, 1))"; }
[ -e runs/run17/summary.json ] || MAX_MINUTES=$(left 80 "$(used runs/run17)") bash experiments/lineages/run17.sh
R17=$(used runs/run17)
echo "lineage26: run 17 used $R17 CPU-minutes; run 26 gets $(left "$TOTAL" "$R17") in all"
[ -e runs/run26/summary.json ] || MAX_MINUTES=$(left "$(left "$TOTAL" "$R17")" "$(used runs/run26)") \
  bash experiments/lineages/run26.sh
bash experiments/lineages/eval_lineage.sh runs/run26 run26
