#!/usr/bin/env bash
# Evaluation of one training lineage's last checkpoint, as runs 22-24 were evaluated (the numbers of issue #6).
# Usage: bash experiments/lineages/eval_lineage.sh RUN_FOLDER TAG   (from the repository root)
# 1. ten edits at once: the step size is picked on zsRE dev records 200-399 (x1, x0.8, x0.7, x0.6, x0.5, two editor
#    steps; runs 22-24 were probed at the first three only: K10_GRID overrides), the one with the highest edit
#    reliability; the evaluation below uses records 0-199, which the pick does not see.
# 2. the fine-tuning baseline's learning rate, tuned on the editor's own matrices (zsRE dev records 450-499, Adam, 5
#    steps, as experiments/results/finetune_lr_zsre_dev.md tuned it for blocks 27-29): the smallest of FT_LRS
#    (default 3e-4, 6e-4, 1e-3) whose token reliability reaches 0.95 (else the most reliable one), so that the
#    baseline makes the edits with as little damage as it can; for blocks 27-29 that is 3e-4, as before.
# 3. experiments/dev_eval.sh: zsRE eval 0-499 single edits (MEND and the fine-tuning baseline in the same run),
#    ten at once on 0-199, CounterFact val 0-199 single. Single edits use the setting fixed since run 21 (x0.7, at
#    most 6 adaptive editor steps, margin 1 logit; SINGLE_ARGS overrides). Writes experiments/results/${TAG}_eval_*.json and the probe JSON.
set -euo pipefail
source scripts/jemalloc.sh  # preloads jemalloc where the system has it (see that file)
RUN=${1:?editor folder, e.g. runs/run24}
TAG=${2:?tag, e.g. run24}
PY=.venv/bin/python
PROBE=experiments/results/probe_${TAG}_zsre_200_399_k10.json
$PY experiments/tune_projection.py --editor "$RUN" --which latest --records 200:400 --edits-at-once 10 \
  --grid "${K10_GRID:-0@1.0@2;0@0.8@2;0@0.7@2;0@0.6@2;0@0.5@2}" --json "$PROBE"
SCALE=$($PY -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print(max(r, key=lambda p: p['reliability_token'])['scale'])" "$PROBE")
echo "ten at once: step scale x$SCALE (picked on zsRE dev 200-399)"
DATA=${MEND_JAX_DATA_DIR:-../shared/data}
FT_PROBE=experiments/results/finetune_lr_${TAG}_zsre_450_499.json
$PY experiments/tune_finetune.py --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" --records 450:500 \
  --layers-of "$RUN" --lrs "${FT_LRS:-3e-4,6e-4,1e-3}" --stop-at-reliability 0.95 --json "$FT_PROBE"
FT_LR=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['picked_lr'])" "$FT_PROBE")
echo "fine-tuning baseline: learning rate $FT_LR (tuned on zsRE dev 450-499 on the editor's matrices)"
TAG=$TAG WHICH=latest EVAL_ARGS="${SINGLE_ARGS:---edit-scale 0.7 --edit-steps 6 --edit-until-margin 1.0}" \
  EVAL_ARGS_K10="--edit-scale $SCALE --edit-steps 2" bash experiments/dev_eval.sh "$RUN" "$FT_LR" 500 200 200
