"""Named settings bundles (`--preset NAME` on the command line, a button on the home page).

- `default` (no flag): fast attribution (EAP-IG-inputs, log-prob metric), q = 0.25 for power, two
  unlearning seeds; the settings `calibrate` uses without `--preset`.
- `paper`: the published CUD pipeline (Cheng et al., 2026; SPEC §6 Presets): EAP-IG-activations with 5
  steps, the zero baseline, the `kl` metric exp(p_c)·(p_c − p), greedy 75-edge circuits from |score|,
  cosine similarity, labels from the top/bottom 12.5% with ≥ 3 of 5 methods agreeing, per-method
  anchors (as the paper's code builds them) next to the consensus ones, and the unlearning methods'
  own defaults (open-unlearning's hyper-parameters, cited in `unlearn/`). Heavy on a CPU: the
  attribution alone costs ≈ (L + 2)·4 + 1 full forward+backward passes per sample (129 on SmolLM2).
- `demo`: every page lights up in under five minutes on a laptop CPU (2 cores: 255–297 s from the
  click to the verdict in headless Chromium, `make e2e`; through the job queue alone see bench/newcomer.py):
  a small forget set, short unlearning with three methods, labels and anchors. Its numbers carry no evidence
  (a dozen labelled samples, a few steps); the run records `preset: demo` and the pages say so.

Every preset's settings are stored with its run (`preset` plus every value).
"""
from __future__ import annotations

from cud_core.pipeline.calibration import CalibrationSettings
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.unlearn import LABEL_METHODS

# the calibrate command's defaults, spelled out (a preset overrides some of them)
DEFAULT = {"limit": None, "forget_fraction": 0.2, "methods": LABEL_METHODS, "steps": 30, "eval_every": 10, "q": 0.25,
           "batch_size": 8, "ig_steps": 5, "edges": 75, "seeds": (0, 1), "folds": 5, "n_boot": 2000,
           "n_permutations": 200, "attribution_method": "eap-ig-inputs", "metric": "logprob", "baseline": "zero",
           "similarity": "cosine", "anchors": "consensus"}

PRESETS = {
    "paper": {
        **DEFAULT,
        "description": "Paper setting: EAP-IG-activations (5 steps, zero baseline, kl metric), 75-edge greedy "
                       "circuits, cosine, q = 12.5% with ≥ 3 of 5 methods, per-method and consensus anchors",
        "q": 0.125, "attribution_method": "eap-ig-activations", "metric": "kl", "anchors": "per-method",
    },
    "demo": {
        **DEFAULT,
        "description": "Demo (≈5 min on a laptop CPU): the first 120 facts (about 80 known), a quarter "
                       "of them forgotten, 3 methods × 8 steps; "
                       "no evidence, just every page filled",
        # the data split
        "limit": 120, "forget_fraction": 0.25,  # of the file's first 120 facts: 19 known forget, 63 retain
        # calibration
        "methods": ("grad_diff", "npo", "simnpo"), "steps": 8, "eval_every": 4, "q": 0.25,
        "batch_size": 4,  # 4 forget + 4 retain samples a step: half the time of 8 (the demo's dominant stage)
        # attribution: two integration steps, 75-edge greedy circuits
        "ig_steps": 2, "edges": 75,
        # validation: one unlearning seed (no reliability ceiling), 3 folds, a short null
        "seeds": (0,), "folds": 3, "n_boot": 1000, "n_permutations": 50,
    },
}


def calibration_settings(name: str, **overrides) -> CalibrationSettings:
    """The CalibrationSettings of preset `name` (recorded in the run as `preset`)."""
    p = {**PRESETS[name], **overrides}
    return CalibrationSettings(
        methods=tuple(p["methods"]), steps=p["steps"], eval_every=p["eval_every"], q=p["q"],
        batch_size=p["batch_size"], seed=p.get("seed", 0), lr=p.get("lr"), preset=name, seeds=tuple(p["seeds"]),
        folds=p["folds"], n_boot=p["n_boot"], n_permutations=p["n_permutations"], similarity=p["similarity"],
        anchors=p["anchors"],
        score=ScoreSettings(method=p["attribution_method"], metric=p["metric"], baseline=p["baseline"],
                            steps=p["ig_steps"], n_edges=p["edges"], batch_size=p["batch_size"], generation=False))


def cli_defaults(name: str) -> dict:
    """The preset as defaults of the `calibrate` command's flags (flags given explicitly still win)."""
    p = PRESETS[name]
    return {"limit": p["limit"], "forget_fraction": p["forget_fraction"], "methods": ",".join(p["methods"]),
            "steps": p["steps"], "eval_every": p["eval_every"], "q": p["q"], "batch_size": p["batch_size"],
            "ig_steps": p["ig_steps"], "edges": p["edges"], "seeds": ",".join(map(str, p["seeds"])),
            "folds": p["folds"], "bootstrap": p["n_boot"], "permutations": p["n_permutations"],
            "attribution_method": p["attribution_method"], "metric": p["metric"], "baseline": p["baseline"],
            "similarity": p["similarity"], "anchors": p["anchors"]}
