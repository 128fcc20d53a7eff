#!/usr/bin/env bash
# Dev evaluation of a trained editor (the numbers in the closing notes / experiments/results).
# Usage: TAG=run2 bash experiments/dev_eval.sh runs/zsre_cf FT_LR [N_ZSRE] [N_CF] [N_ZSRE_10]
# writes experiments/results/${TAG}_eval_*.json
# FT_LR: the fine-tuning baseline's learning rate, tuned with experiments/tune_finetune.py on dev records.
# WHICH=latest evaluates the run's last checkpoint instead of its best by dev loss (default best).
# EVAL_ARGS="--project-out 16 --edit-scale 4" composes the editor with the projection of editing/projection.py
# (tuned with experiments/tune_projection.py on dev records).
# EVAL_ARGS_K10 replaces EVAL_ARGS for the 10-at-once evaluation only (e.g. its own --edit-scale / --edit-steps, tuned
# with tune_projection.py --edits-at-once 10 on zsRE dev records 200-499, which that evaluation (0-199) does not use).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?editor folder}
FT_LR=${2:?fine-tuning learning rate}
NZ=${3:-500}; NC=${4:-500}; NZ10=${5:-500}
DATA=${MEND_JAX_DATA_DIR:-../shared/data}
M=.venv/bin/mend-jax
OUT=experiments/results
TAG=${TAG:?TAG=name of the run, prefixes the result files}
WHICH=${WHICH:-best}
read -r -a EXTRA <<< "${EVAL_ARGS:-}"
read -r -a EXTRA10 <<< "${EVAL_ARGS_K10:-${EVAL_ARGS:-}}"
mkdir -p "$OUT"
$M eval --editor "$RUN" --which "$WHICH" ${EXTRA[@]+"${EXTRA[@]}"} --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" --records "0:$NZ" \
  --finetune-lr "$FT_LR" --per-record --json "$OUT/${TAG}_eval_zsre_dev_single.json"
$M eval --editor "$RUN" --which "$WHICH" ${EXTRA10[@]+"${EXTRA10[@]}"} --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" --records "0:$NZ10" \
  --edits-at-once 10 --no-finetune --per-record --json "$OUT/${TAG}_eval_zsre_dev_10at_once.json"
$M eval --editor "$RUN" --which "$WHICH" ${EXTRA[@]+"${EXTRA[@]}"} --data counterfact --file "$DATA/counterfact/counterfact-val.json" --records "0:$NC" \
  --finetune-lr "$FT_LR" --per-record --json "$OUT/${TAG}_eval_counterfact_dev_single.json"
