#!/usr/bin/env bash
# Dev evaluation of a trained editor (the numbers in the closing notes / experiments/results).
# Usage: bash experiments/dev_eval.sh runs/zsre_cf [FT_LR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?editor folder}
DATA=${MEND_JAX_DATA_DIR:-../shared/data}
M=.venv/bin/mend-jax
OUT=experiments/results
mkdir -p "$OUT"
FT_LR=${2:-}
if [ -z "$FT_LR" ]; then
  .venv/bin/python experiments/tune_finetune.py --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" \
    --records 450:500 --lrs 1e-4,3e-4,1e-3 --json "$OUT/finetune_lr_zsre_dev.json"
  FT_LR=$(.venv/bin/python - "$OUT/finetune_lr_zsre_dev.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
# best reliability among learning rates whose locality (per token) stays >= 0.8 (else best reliability)
ok = {lr: v for lr, v in r.items() if v["locality_token"] >= 0.8} or r
print(max(ok, key=lambda lr: (ok[lr]["reliability_token"], ok[lr]["locality_token"])))
PY
)
fi
echo "fine-tuning baseline lr: $FT_LR"
$M eval --editor "$RUN" --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" --records 0:500 \
  --finetune-lr "$FT_LR" --json "$OUT/eval_zsre_dev_single.json"
$M eval --editor "$RUN" --data counterfact --file "$DATA/counterfact/counterfact-val.json" --records 0:500 \
  --finetune-lr "$FT_LR" --json "$OUT/eval_counterfact_dev_single.json"
$M eval --editor "$RUN" --data zsre --file "$DATA/zsre/zsre_mend_eval_portability_gpt4.json" --records 0:500 \
  --edits-at-once 10 --no-finetune --json "$OUT/eval_zsre_dev_10at_once.json"
