#!/usr/bin/env bash
# Run 29: run 28 (lineage28.sh: lineage 26's recipe on the MLP output matrices of blocks 21-29) again, from scratch, on
# a fresh machine (session 32's kept nothing of runs/run28), into its own folders so that run 28's files stay: its
# editor is the one whose test-time settings were probed on zsRE dev 0-99 and CounterFact val 200-299 in session 31
# (x0.8 with a 2-logit margin raised generalization on both at the same whole answers), to be evaluated at a setting
# picked on dev records. Usage (from the repository root): TOTAL_MINUTES=180 bash experiments/lineages/lineage29.sh
# Killed, or run again, it goes on from the last checkpoints (see lineage26.sh); SINGLE_ARGS (eval_lineage.sh) sets
# the single-edit evaluation; evaluation files: run29_eval_*.json.
set -euo pipefail
P1=runs/run29a P2=runs/run29 TAG=run29 LINEAGE_ARGS="--edit-first-block 21 --edit-blocks 9 --edit-matrices down_proj" \
  exec bash experiments/lineages/lineage26.sh
