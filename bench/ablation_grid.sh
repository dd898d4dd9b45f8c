#!/usr/bin/env bash
# Continue the ablation grid of results/README.md on any machine, from the stored world-facts calibration
# (results/world-facts.cudpack) instead of re-running it: unpack it, score the attribution settings
# asked for (all that are missing by default; each stored as soon as its 24 cells are done, so a
# stopped run resumes), then store the summary, regenerate its section there and re-pack the bundle
# with the new cells.
#
#   bench/ablation_grid.sh                                         # every missing setting
#   bench/ablation_grid.sh eap-ig-activations-peer/logprob/mean,eap-ig-activations-peer/kl/mean   # one pair
#   DEVICE=cuda bench/ablation_grid.sh                             # on a GPU
#
# On 2 CPU cores EAP-IG-activations takes 45-90 min per metric pair (logprob and kl of one baseline
# share their passes; the peer mean pair took 65 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WS=${WS:-workspace-ablation}
RUN=calibrate-20261202-072308-d835b4
BUNDLE=results/world-facts.cudpack
DEVICE=${DEVICE:-auto}

if [[ ! -d "$WS" ]]; then
  $PY -m cud_core unpack "$BUNDLE" --workspace "$WS"
fi
SELECT=()
if [[ -n "${1:-}" ]]; then
  SELECT=(--attribution "$1")
fi
$PY -m cud_core ablate --workspace "$WS" --run "$RUN" --device "$DEVICE" "${SELECT[@]}" --format json \
  > results/ablation-world-facts.json.tmp
mv results/ablation-world-facts.json.tmp results/ablation-world-facts.json
$PY -m cud_core ablate --from-json results/ablation-world-facts.json --readme results/README.md > /dev/null
$PY -m cud_core pack --workspace "$WS" --run "$RUN" --out "$BUNDLE"
