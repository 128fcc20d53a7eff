#!/usr/bin/env bash
# Run 26: run 22's recipe with WikiText locality. Run 17's last checkpoint (experiments/lineages/run17.sh, 80
# CPU-minutes) goes on with its Adam state and run 22's settings, plus one WikiText passage per problem as a further
# locality input (--loc-text; whole-answer locality is lost at near-tie tokens of generic text, which the NQ questions
# hold few of), for the rest of the 180 CPU-minutes:
# `MAX_MINUTES=<180 minus run 17's summary minutes> bash experiments/lineages/run26.sh` (the same command resumes
# from $OUT's last checkpoint: then MAX_MINUTES=<what is left>, see minutes_total in $OUT/summary.json). Run from the
# repository root.
set -euo pipefail
OUT=${OUT:-runs/run26} exec bash experiments/lineages/run22.sh \
  --loc-text ../shared/data/wikitext/wiki.test.raw --loc-text-rows 1 "$@"
