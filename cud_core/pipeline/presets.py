"""Named settings bundles (`--preset NAME` on the command line, a button on the home page).

- `default` (no flag): fast attribution (EAP-IG-inputs, log-prob metric), q = 0.25 for power, two
  unlearning seeds; the settings `calibrate` uses without `--preset`.
- `paper`: the published CUD pipeline (Cheng et al., 2026): EAP-IG-activations with 5
  steps, the zero baseline, the `kl` metric exp(p_c)·(p_c − p), greedy 75-edge circuits from |score|,
  cosine similarity, labels from the top/bottom 12.5% with ≥ 3 of 5 methods agreeing, per-method
  anchors (as the paper's code builds them) next to the consensus ones, and the unlearning methods'
  own defaults (open-unlearning's hyper-parameters, cited in `unlearn/`). Heavy on a CPU: the
  attribution alone costs ≈ (L + 2)·4 + 1 full forward+backward passes per sample (129 on SmolLM2).
- `demo`: every page lights up in under five minutes on a laptop CPU (2 cores: 255–297 s from the
  click to the verdict in headless Chromium, `make e2e`; through the job queue alone see bench/newcomer.py):
  a small forget set, short unlearning with three methods, labels and anchors. Its numbers carry no evidence
  (a dozen labelled samples, a few steps); the run records `preset: demo` and the pages say so.

A preset is a `Preset`: the data split and the `CalibrationSettings` (with its `ScoreSettings`). `DEFAULT`
is the dataclasses' own defaults, so each default value is stated once, in its dataclass field; the command
line's flags and the home page's form read theirs from it. Every preset's settings are stored with its run
(`preset` plus every value).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import reduce

from cud_core.pipeline.calibration import CalibrationSettings
from cud_core.pipeline.scoring import ScoreSettings

# the `unlearn` command's forget share: one run of one method labels nothing, so it takes a smaller (faster)
# forget set than a calibration, which needs enough samples per label (`Preset.forget_fraction`)
UNLEARN_FORGET_FRACTION = 0.1


@dataclass(frozen=True)
class Preset:
    """A named settings bundle: the data split and the calibration's settings."""
    description: str = ""
    limit: int | None = None        # use only the file's first N samples (before the knowledge filter)
    forget_fraction: float = 0.2    # ≈ 125 known world-facts for the embedded model: ≥ 100 evaluated forget samples
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)

    @property
    def seed(self) -> int:
        """The split's seed: the calibration's (one `--seed` flag, one Seed field on the home page)."""
        return self.calibration.seed


DEFAULT = Preset()

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        description="Paper setting: EAP-IG-activations (5 steps, zero baseline, kl metric), 75-edge greedy "
                    "circuits, cosine, q = 12.5% with ≥ 3 of 5 methods, per-method and consensus anchors",
        calibration=CalibrationSettings(
            q=0.125, anchors="per-method",
            score=ScoreSettings(method="eap-ig-activations", metric="kl", generation=False)),
    ),
    "demo": Preset(
        description="Demo (≈5 min on a laptop CPU): the first 120 facts, of which the embedded model knows 82: "
                    "19 forgotten (a quarter of the file's share), 63 retained; 3 methods × 8 steps; "
                    "no evidence, just every page filled",
        limit=120, forget_fraction=0.25,  # of the file's first 120 facts: 19 known forget, 63 retain
        calibration=CalibrationSettings(
            methods=("grad_diff", "npo", "simnpo"), steps=8, eval_every=4,
            batch_size=4,  # 4 forget + 4 retain samples a step: half the time of 8 (the demo's dominant stage)
            # validation: one unlearning seed (no reliability ceiling), 3 folds, a short null
            seeds=(0,), folds=3, n_boot=1000, n_permutations=50,
            # every run to its 8 steps and every method votes: no operating point (a demo is no evidence)
            protocol=None,
            # attribution: two integration steps (75-edge greedy circuits as by default)
            score=ScoreSettings(steps=2, batch_size=4, generation=False)),
    ),
}

# the `calibrate` command's flags (argparse names) and the Preset fields they set
FLAGS = {"limit": "limit", "forget_fraction": "forget_fraction", "seed": "seed",
         "methods": "calibration.methods", "steps": "calibration.steps", "lr": "calibration.lr",
         "eval_every": "calibration.eval_every", "batch_size": "calibration.batch_size",
         "checkpoint_every": "calibration.checkpoint_every", "q": "calibration.q", "seeds": "calibration.seeds",
         "forget_sets": "calibration.forget_sets",
         "folds": "calibration.folds", "bootstrap": "calibration.n_boot",
         "permutations": "calibration.n_permutations", "similarity": "calibration.similarity",
         "anchors": "calibration.anchors", "attribution_method": "calibration.score.method",
         "metric": "calibration.score.metric", "baseline": "calibration.score.baseline",
         "edges": "calibration.score.n_edges", "ig_steps": "calibration.score.steps"}


# what a figure, caption or slide made from a Demo run says first
DEMO_MARK = "DEMO (not evidence)"


def preset_of(run: dict) -> str:
    """The preset a calibration run was made with ("default" without one)."""
    return (run.get("config") or {}).get("preset") or "default"


def is_demo(run: dict | None) -> bool:
    """Whether `run` is a Demo calibration, whose numbers carry no evidence."""
    return run is not None and preset_of(run) == "demo"


def calibration_settings(name: str, **overrides) -> CalibrationSettings:
    """A copy of preset `name`'s CalibrationSettings (recorded in the run as `preset`); `overrides`: its fields."""
    settings = PRESETS[name].calibration
    return replace(settings, score=replace(settings.score), preset=name, **overrides)


def flag_defaults(preset: Preset) -> dict:
    """`preset` as the `calibrate` command's flag defaults (lists as the flags spell them: "0,1")."""
    values = {flag: reduce(getattr, path.split("."), preset) for flag, path in FLAGS.items()}
    values["fixed_steps"] = preset.calibration.protocol is None
    return {flag: ",".join(map(str, v)) if isinstance(v, tuple) else v for flag, v in values.items()}


def cli_defaults(name: str) -> dict:
    """Preset `name` as defaults of the `calibrate` command's flags (flags given explicitly still win)."""
    return flag_defaults(PRESETS[name])
