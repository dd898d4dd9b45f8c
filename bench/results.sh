#!/usr/bin/env bash
# The results section of results/README.md, end to end: the calibrations on the embedded model (CPU, the
# default settings fixed before any run, the operating-point protocol included; see the flags below and
# `python -m cud_core calibrate --help`), their reports stored as JSON under results/, and that section
# regenerated from those files (with the earlier runs' stored reports, which predate the protocol).
#
#   bench/results.sh            # the calibrations (about 1-2 h each on 2 CPU cores), then results/README.md
#   bench/results.sh readme     # only regenerate the section in results/README.md from results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WS=${WS:-workspace-results}

# the newest calibration of a workspace (a calibration where no method reaches an operating point fails,
# and its report holds the unlearning regimes alone: `report --run` shows it)
newest() { $PY -c "import sys; from cud_core.store.workspace import Workspace; \
print(Workspace(sys.argv[1]).list_runs('calibrate')[0]['id'])" "$1"; }

# the newest calibration of a dataset in a workspace (as `newest`: a failed one's report holds its regimes)
calibration_of() { $PY -c "import sys; from cud_core.store.workspace import Workspace; \
print(next(r['id'] for r in Workspace(sys.argv[1]).list_runs('calibrate') if r['dataset'] == sys.argv[2]))" \
"$1" "$2"; }
# the cached folder of the embedded model fine-tuned on a dataset (a calibration on it made it)
finetuned_folder() { $PY -c "import sys; from cud_core.data.samples import load_data; \
from cud_core.engine.models import load_model; from cud_core.pipeline.finetune import cached_folder; \
print(cached_folder(load_model('embedded', device='cpu'), load_data(sys.argv[1])))" "$1"; }

if [[ "${1:-}" != "readme" ]]; then
  # world-facts: defaults (forget fraction 0.2 of the file's facts, kept if the model knows them;
  # 5 methods x 2 seeds x at most 30 steps, each at its operating point; q 0.25; 5 folds; 2000 bootstrap
  # resamples; 200 permutations)
  $PY -m cud_core calibrate --data builtin:world-facts --workspace "$WS/world-facts" || true
  $PY -m cud_core report --workspace "$WS/world-facts" --run "$(newest "$WS/world-facts")" --format json \
    > results/world-facts-protocol.json
  # the same facts as completions (the lead before the key is given; the fact is the answer), otherwise the
  # defaults; then the change fixed after its first tries (results/README, "The runs"): the model first
  # adapted to the completion format on the facts it does not know
  $PY -m cud_core calibrate --data builtin:world-facts-completion --workspace "$WS/completion" || true
  $PY -m cud_core report --workspace "$WS/completion" --run "$(newest "$WS/completion")" --format json \
    > results/world-facts-completion-protocol.json
  $PY -m cud_core calibrate --data builtin:world-facts-completion-adapted --workspace "$WS/adapted" || true
  $PY -m cud_core report --workspace "$WS/adapted" --run "$(newest "$WS/adapted")" --format json \
    > results/world-facts-adapted-protocol.json
  # and the second change fixed after it: a smaller forget set (5% of the known facts)
  $PY -m cud_core calibrate --data builtin:world-facts-completion-adapted --forget-fraction 0.05 \
    --workspace "$WS/adapted-small" || true
  $PY -m cud_core report --workspace "$WS/adapted-small" --run "$(newest "$WS/adapted-small")" --format json \
    > results/world-facts-adapted-small-protocol.json
  # and the third, the design for n >= 100 (results/README, "The runs": its first form, 4 sets, was stopped once
  # no method could vote): 30% of the facts cut into 12 sets matched on the original NLL, each unlearned on its
  # own (grad_diff and NPO, one seed, evaluated every 5 steps), the sets where both are valid pooled; then the
  # prospective test on those sets
  $PY -m cud_core validate-prospective --data builtin:world-facts-completion-adapted --forget-fraction 0.3 \
    --forget-sets 12 --seeds 0 --eval-every 5 --methods grad_diff,npo --workspace "$WS/sets" --format json \
    > results/world-facts-sets-prospective.json || true
  $PY -m cud_core report --workspace "$WS/sets" --run "$(newest "$WS/sets")" --format json \
    > results/world-facts-sets-protocol.json
  # fictitious authors (TOFU-like; the model is fine-tuned on them first): 40 authors x 6 questions,
  # 45% forgotten (108 samples), otherwise the same defaults
  $PY -m cud_core calibrate --data builtin:fictitious-authors:40 --forget-fraction 0.45 \
    --workspace "$WS/fictitious" || true
  $PY -m cud_core report --workspace "$WS/fictitious" --run "$(newest "$WS/fictitious")" --format json \
    > results/fictitious-authors-protocol.json
  # the same authors as completions (the fact asked for is the answer), in the twelve-set design above
  $PY -m cud_core validate-prospective --data builtin:fictitious-authors-completion:40 --forget-fraction 0.45 \
    --forget-sets 12 --seeds 0 --eval-every 5 --methods grad_diff,npo --workspace "$WS/fictitious-sets" \
    --format json > results/fictitious-authors-sets-prospective.json || true
  FA=builtin:fictitious-authors-completion:40 WF=builtin:world-facts-completion
  $PY -m cud_core report --workspace "$WS/fictitious-sets" --run "$(calibration_of "$WS/fictitious-sets" $FA)" \
    --format json > results/fictitious-authors-sets-protocol.json
  # anchors across datasets (results/README, "The runs"): world-facts calibrated in the same design on the authors'
  # fine-tune itself, in the same workspace; then each calibration's anchors on the other's forget samples
  $PY -m cud_core calibrate --model "$(finetuned_folder $FA)" --data $WF --forget-fraction 0.3 --forget-sets 12 \
    --seeds 0 --eval-every 5 --methods grad_diff,npo --workspace "$WS/fictitious-sets" || true
  wf=$(calibration_of "$WS/fictitious-sets" $WF)
  fa=$(calibration_of "$WS/fictitious-sets" $FA)
  $PY -m cud_core report --workspace "$WS/fictitious-sets" --run "$wf" --format json \
    > results/world-facts-on-authors-ft-protocol.json
  # (a calibration without labels has no anchors and nothing to predict: its transfer fails and is not rendered)
  $PY -m cud_core transfer --workspace "$WS/fictitious-sets" --anchors "$wf" --target "$fa" --format json \
    > results/transfer-world-facts-to-authors.json || true
  $PY -m cud_core transfer --workspace "$WS/fictitious-sets" --anchors "$fa" --target "$wf" --format json \
    > results/transfer-authors-to-world-facts.json || true
fi
reports=()
for name in world-facts-sets-protocol fictitious-authors-sets-protocol world-facts-on-authors-ft-protocol world-facts-adapted-small-protocol world-facts-adapted-protocol world-facts-completion-protocol world-facts-protocol \
    fictitious-authors-protocol world-facts fictitious-authors world-facts-paper; do
  [[ -s results/$name.json ]] && reports+=(--from-json "results/$name.json")
done
$PY -m cud_core report "${reports[@]}" --readme results/README.md --format markdown > /dev/null
prospective=()
for name in world-facts-sets-prospective fictitious-authors-sets-prospective; do
  # a stored report holds a prospective validation only when its calibration gave labels
  grep -q '"interventional"' "results/$name.json" 2>/dev/null && prospective+=(--from-json "results/$name.json")
done
if [[ ${#prospective[@]} -gt 0 ]]; then
  $PY -m cud_core validate-prospective "${prospective[@]}" --readme results/README.md > /dev/null
fi
transfer=()
for name in transfer-world-facts-to-authors transfer-authors-to-world-facts; do
  [[ -s results/$name.json ]] && transfer+=(--from-json "results/$name.json")
done
if [[ ${#transfer[@]} -gt 0 ]]; then
  $PY -m cud_core transfer "${transfer[@]}" --readme results/README.md > /dev/null
fi
