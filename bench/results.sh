#!/usr/bin/env bash
# The results section of results/README.md, end to end: the two calibrations on the embedded model (CPU, the
# default settings fixed before any run; see the flags below and `python -m cud_core calibrate --help`),
# their reports stored as JSON under results/, and that section regenerated from those files (with the
# paper-preset run's stored report, results/world-facts-paper.json: `calibrate --preset paper`).
#
#   bench/results.sh            # both calibrations (about 1-2 h each on 2 CPU cores), then results/README.md
#   bench/results.sh readme     # only regenerate the section in results/README.md from results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WS=${WS:-workspace-results}

if [[ "${1:-}" != "readme" ]]; then
  # world-facts: defaults (forget fraction 0.2 of the file's facts, kept if the model knows them;
  # 5 methods x 2 seeds x 30 steps; q 0.25; 5 folds; 2000 bootstrap resamples; 200 permutations)
  $PY -m cud_core calibrate --data builtin:world-facts --workspace "$WS/world-facts"
  $PY -m cud_core report --workspace "$WS/world-facts" --format json > results/world-facts.json
  # fictitious authors (TOFU-like; the model is fine-tuned on them first): 40 authors x 6 questions,
  # 45% forgotten (108 samples), otherwise the same defaults
  $PY -m cud_core calibrate --data builtin:fictitious-authors:40 --forget-fraction 0.45 --workspace "$WS/fictitious"
  $PY -m cud_core report --workspace "$WS/fictitious" --format json > results/fictitious-authors.json
fi
$PY -m cud_core report --from-json results/world-facts.json --from-json results/fictitious-authors.json \
  --from-json results/world-facts-paper.json --readme results/README.md --format markdown > /dev/null
