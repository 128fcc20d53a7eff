#!/usr/bin/env bash
# Run 28: lineage 26's recipe (run 17's settings for 80 CPU-minutes, then run 26's for the rest of the 180) on the
# MLP output matrices (down_proj) of blocks 21-29 instead of all MLP matrices of the last three
# blocks (27-29), from scratch. The fine-tuning probe of session 30
# (experiments/results/finetune_blocks_down_proj_zsre_0_99*.json, zsRE dev 0-99, Adam 5 steps) at the same
# reliability as MEND's matrices keeps more unrelated answers *and* generalizes better there (lr 1e-4: reliability
# 0.545, generalization 0.527, whole answers 0.71, against 0.544 / 0.504 / 0.63 at blocks 27-29), where blocks 21-23
# (run 27) bought locality with generalization. Steps cost more than run 27's (~3.8 s in part 1 against 2.4: nine
# 1536-wide inputs to whiten; the hidden cache holds blocks 0-20 as for run 27; one editor net, 1536 -> 576).
# Usage (from the repository root): TOTAL_MINUTES=180 bash experiments/lineages/lineage28.sh
# Killed, or run again, it goes on from the last checkpoints (see lineage26.sh); evaluation files: run28_eval_*.json.
set -euo pipefail
P1=runs/run28a P2=runs/run28 TAG=run28 LINEAGE_ARGS="--edit-first-block 21 --edit-blocks 9 --edit-matrices down_proj" \
  exec bash experiments/lineages/lineage26.sh
