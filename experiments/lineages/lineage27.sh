#!/usr/bin/env bash
# Run 27: lineage 26's recipe (run 17's settings for 80 CPU-minutes, then run 26's for the rest of the 180) on the
# MLPs of blocks 21-23 instead of MEND's last three (27-29), from scratch: the fine-tuning probe of session 28
# (experiments/results/finetune_blocks_zsre_0_99.json) flips 7 of 14 near-tie answers at blocks 21-23 (27-29: 12) at the
# same reliability. Steps cost more (blocks 21-29 run for every edit; the hidden cache holds blocks 0-20).
# Usage (from the repository root): TOTAL_MINUTES=180 bash experiments/lineages/lineage27.sh
# Killed, or run again, it goes on from the last checkpoints (see lineage26.sh); evaluation files: run27_eval_*.json.
set -euo pipefail
P1=runs/run27a P2=runs/run27 TAG=run27 LINEAGE_ARGS="--edit-first-block 21" \
  exec bash experiments/lineages/lineage26.sh
