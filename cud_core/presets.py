"""Named settings bundles (`--preset NAME` on the command line, a button on the home page).

`demo`: every page lights up in about five minutes on a laptop CPU (275 s in bench/newcomer.py): a small forget set, short unlearning
with three methods, labels and anchors. Its numbers carry no evidence (a dozen labelled samples, a
few steps); the run records `preset: demo` and the pages say so.
"""
from __future__ import annotations

from .calibration import CalibrationSettings
from .scoring import ScoreSettings

PRESETS = {
    "demo": {
        "description": "Demo (≈5 min on a laptop CPU): the first 120 facts (about 80 known), a quarter "
                       "of them forgotten, 3 methods × 8 steps; "
                       "no evidence, just every page filled",
        # the data split
        "limit": 120, "forget_fraction": 0.25,  # of the file's first 120 facts: 19 known forget, 63 retain
        # calibration
        "methods": ("grad_diff", "npo", "simnpo"), "steps": 8, "eval_every": 4, "q": 0.25, "batch_size": 8,
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
        folds=p["folds"], n_boot=p["n_boot"], n_permutations=p["n_permutations"],
        score=ScoreSettings(steps=p["ig_steps"], n_edges=p["edges"], batch_size=p["batch_size"], generation=False))


def cli_defaults(name: str) -> dict:
    """The preset as defaults of the `calibrate` command's flags (flags given explicitly still win)."""
    p = PRESETS[name]
    return {"limit": p["limit"], "forget_fraction": p["forget_fraction"], "methods": ",".join(p["methods"]),
            "steps": p["steps"], "eval_every": p["eval_every"], "q": p["q"], "batch_size": p["batch_size"],
            "ig_steps": p["ig_steps"], "edges": p["edges"], "seeds": ",".join(map(str, p["seeds"])),
            "folds": p["folds"], "bootstrap": p["n_boot"], "permutations": p["n_permutations"]}
