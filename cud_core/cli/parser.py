"""The command line's argument parser: one sub-command per job, shared flag groups."""
from __future__ import annotations

import argparse

from cud_core.data.samples import BUILTINS
from cud_core.difficulty.cud import SIMILARITIES
from cud_core.difficulty.transfer import N_PERMUTATIONS as TRANSFER_PERMUTATIONS
from cud_core.engine.attribution import BASELINES, METHODS, METRICS
from cud_core.engine.circuits import BINARISE
from cud_core.pipeline.calibration import ANCHORS
from cud_core.pipeline.presets import DEFAULT, PRESETS, UNLEARN_FORGET_FRACTION, flag_defaults
from cud_core.pipeline.prospective import ProspectiveSettings
from cud_core.pipeline.scoring import ScoreSettings
from cud_core.pipeline.unlearning import UnlearnSettings
from cud_core.store.workspace import DEFAULT_WORKSPACE
from cud_core.unlearn import METHODS as UNLEARN_METHODS

# the flags' defaults are the settings dataclasses' own (`presets.DEFAULT` for calibrate)
SCORE, UNLEARN = ScoreSettings(), UnlearnSettings()


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, offline), a local model folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--allow-download", action="store_true", help="allow fetching a hub id over the network")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled weights (.bin/.pt), which can run code; safetensors only otherwise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cud_core",
                                     description="CUD Explorer engine: circuit-guided unlearning difficulty.")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> its parser (presets change their defaults)

    p = sub.add_parser("info", help="print facts about a model")
    model_args(p)
    p.add_argument("--json", action="store_true", help="end with one JSON object on the last line")

    p = sub.add_parser("score", help="score every sample of a dataset into the workspace (resumes)")
    model_args(p)
    data_args(p)
    p.add_argument("--method", default=SCORE.method, choices=list(METHODS))
    p.add_argument("--steps", type=int, default=SCORE.steps, help="integration steps for the IG methods")
    p.add_argument("--baseline", default=SCORE.baseline, choices=list(BASELINES))
    p.add_argument("--metric", default=SCORE.metric, choices=list(METRICS))
    p.add_argument("--batch-size", type=int, default=SCORE.batch_size)
    p.add_argument("--binarise", default=SCORE.binarise, choices=list(BINARISE), help="how a sample's circuit is cut")
    p.add_argument("--edges", type=int, default=SCORE.n_edges, help="circuit size n")
    p.add_argument("--store", default=SCORE.store, help="edge score storage: float16 (all edges) or topk:K")
    p.add_argument("--faithfulness", action="store_true", help="also measure each circuit's faithfulness")
    p.add_argument("--no-generation", action="store_true", help="skip greedy generation (no ROUGE-L)")
    executor_args(p)
    p.add_argument("--anchors", default=None, metavar="RUN",
                   help="score the samples against the saved anchors of calibration RUN (its attribution and "
                        "circuit settings replace the flags above): CUD for new samples, before any unlearning")
    p = sub.add_parser("unlearn", help="run one unlearning method and store its forgetting curves")
    model_args(p)
    data_args(p)
    split_args(p, UNLEARN_FORGET_FRACTION, UNLEARN.seed)
    p.add_argument("--method", default=UNLEARN.method, choices=list(UNLEARN_METHODS))
    unlearn_args(p)
    p.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE",
                   help="method hyper-parameter, e.g. --hyper beta=0.2 (repeatable)")
    p.add_argument("--diff-circuits", action="store_true",
                   help="re-attribute the forget samples in the unlearned copy and store the circuit diff")
    p.add_argument("--like", default=None, metavar="RUN",
                   help="with --diff-circuits: attribute as this score or calibration run did (default: the "
                        "score command's defaults)")

    p = sub.add_parser("calibrate", help="unlearn with K methods, label easy/hard, build anchors, score and "
                                         "validate CUD")
    calibrate_args(p)
    p = sub.add_parser("validate-prospective", help="on a calibration (run first if needed): split the forget set in "
                                                    "halves, unlearn A, score B's CUD before B is unlearned, then "
                                                    "unlearn B and the CUD-easiest/-hardest groups of B separately")
    calibrate_args(p)
    p.add_argument("--k", type=int, default=ProspectiveSettings.k,
                   help="CUD-easiest and CUD-hardest samples of half B unlearned as groups (default %(default)s)")
    p.add_argument("--strata", type=int, default=ProspectiveSettings.strata,
                   help="original-NLL strata of the matched selection (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=ProspectiveSettings.seed, help="seed of the A/B split")
    stored_report_args(p, "prospective")

    p = sub.add_parser("report", help="a calibration's validation: offline HTML + Markdown, or JSON")
    calibration_args(p)
    p.add_argument("--format", default="files", choices=["files", "json", "markdown"],
                   help="files: write RUN.html and RUN.md (see --out); json/markdown: print to stdout")
    p.add_argument("--out", default=None, help="folder for the files (default: WORKSPACE/reports)")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="also replace the generated results section of this README with the report(s)")
    p.add_argument("--from-json", action="append", default=[], metavar="FILE",
                   help="a stored report (`--format json` output) instead of a workspace run; repeatable, "
                        "for a README section covering several runs")

    p = sub.add_parser("faithfulness", help="faithfulness of a calibration's anchor circuits against circuit size "
                                            "(n = 10 … 10,000; zero and mean ablation), stored for the report")
    calibration_args(p)
    p.add_argument("--members", type=int, default=None, help="at most this many members per anchor (default: all)")
    model_args(p)
    executor_args(p)

    p = sub.add_parser("ablate", help="re-score a finished calibration under the ablation grid (attribution × "
                                      "metric × baseline × circuit size × similarity × anchors; resumes) and "
                                      "validate every cell out-of-fold")
    calibration_args(p)
    p.add_argument("--attribution", default=None,
                   help="comma-separated attribution methods, or single settings METHOD/METRIC/BASELINE, to "
                        "run (default: all); the others are reported as not run. A setting whose scoring the "
                        "workspace already has (e.g. a --preset paper calibration on the same samples) is reused. "
                        "The logprob and kl settings of a method and baseline share their attribution passes. "
                        "EAP-IG-activations costs ~22-45 s per sample (both metrics) on a 2-core CPU")
    p.add_argument("--limit", type=int, default=None,
                   help="the --limit the calibration was run with (to rebuild its retain set)")
    p.add_argument("--format", default="markdown", choices=["markdown", "json"],
                   help="print the summary as Markdown or JSON (e.g. > results/ablation-world-facts.json)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="a stored summary (`--format json` output) instead of running anything")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="also replace the generated ablation section of this README with the summary")
    model_args(p)
    executor_args(p)

    p = sub.add_parser("circuit-diff", help="circuit change after unlearning (a run made with --diff-circuits), "
                                            "per calibration label and CUD bucket, with CIs and its correlation "
                                            "with realised hardness")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", required=True, help="an unlearning run with a stored circuit diff, or a calibration "
                                                "(then --method picks its diff)")
    p.add_argument("--method", default=None, help="with a calibration --run: whose unlearned copy")
    p.add_argument("--calibration", default=None, help="the calibration whose labels and CUD buckets group the "
                                                       "samples (default: --run when it is one, else the newest)")
    p.add_argument("--bootstrap", type=int, default=2000)

    p = sub.add_parser("transfer", help="one calibration's anchors on another calibration's forget samples (same "
                                        "model weights, e.g. another dataset): their CUD against that "
                                        "calibration's realised hardness, beside its own out-of-fold CUD")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--anchors", default=None, metavar="RUN", help="the calibration whose anchors are applied")
    p.add_argument("--target", default=None, metavar="RUN",
                   help="the calibration whose forget samples (its scoring run) and outcomes they are tested on")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for CIs (default %(default)s)")
    p.add_argument("--permutations", type=int, default=TRANSFER_PERMUTATIONS,
                   help="shuffles of the hardness for the permutation p (default %(default)s)")
    stored_report_args(p, "transfer")

    p = sub.add_parser("export", help="print a calibration's per-sample table as CSV")
    calibration_args(p)
    p.add_argument("--validation", action="store_true", help="print the validation table instead")

    p = sub.add_parser("pack", help="write a finished calibration (and its scoring run) to one portable file, "
                                    "for another machine or workspace (`unpack`)")
    calibration_args(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the bundle to write (e.g. world-facts.cudpack)")
    p.add_argument("--with-scores", action="store_true",
                   help="also the per-sample edge scores (about 0.25 MB per sample on SmolLM2-135M; not needed by "
                        "report, export or ablate)")

    p = sub.add_parser("talk-pack", help="the key figures of a calibration for a talk: an offline HTML slideshow "
                                         "and each figure as SVG and PNG, with titles and settings")
    calibration_args(p)
    p.add_argument("--out", default=None, metavar="DIR", help="folder to write (default: WORKSPACE/talks/RUN)")
    p.add_argument("--no-png", action="store_true", help="SVG figures only")

    p = sub.add_parser("unpack", help="add the runs of a `pack` bundle to a workspace")
    p.add_argument("bundle", metavar="FILE")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--max-size", default="4G", help="refuse a bundle that unpacks to more than this (default 4G; "
                                                    "one member at most as much)")
    p.add_argument("--max-ratio", type=float, default=200.0,
                   help="refuse a member past 16 MiB that inflates more than this many times (default 200: zip bombs)")

    p = sub.add_parser("upgrade", help="convert a workspace an older CUD Explorer wrote to this version's formats "
                                       "(once; the database schema, score files, ablation cells)")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    return parser


def stored_report_args(p: argparse.ArgumentParser, section: str) -> None:
    """--format, --from-json and --readme of a command whose report regenerates a README section
    (`common.show_reports`)."""
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    p.add_argument("--from-json", action="append", default=[], metavar="FILE",
                   help="show a stored report (`--format json` output) instead of computing one; repeatable, for a "
                        "README section covering several")
    p.add_argument("--readme", default=None, metavar="README",
                   help=f"also replace the generated {section} section of this README with the report(s)")


def calibration_args(p: argparse.ArgumentParser) -> None:
    """--workspace and --run for the commands over a finished calibration (`common.finished_calibration`)."""
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--run", default=None, help="calibration run id (default: the newest finished one)")


def executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the units of work (scoring batches, unlearning runs, ablation cells, faithfulness "
                        "curves) run: here (default) or on a Ray cluster (the same results; see docs/cluster.md)")
    p.add_argument("--ray-address", default="local-cluster",
                   help="with --executor ray: auto (a running cluster), HOST:PORT, or local-cluster (a private "
                        "Ray instance on this machine)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors holding the model (default: one per GPU "
                                                              "slot, else one per CPU slot)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray worker (a fraction shares one GPU)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per Ray worker")


def split_args(p: argparse.ArgumentParser, forget_fraction: float, seed: int) -> None:
    p.add_argument("--forget-fraction", type=float, default=forget_fraction,
                   help="share of samples to forget (default %(default)s)")
    p.add_argument("--forget-ids", default=None, help="explicit forget ids: comma-separated or a file, one per line")
    p.add_argument("--seed", type=int, default=seed)


def unlearn_args(p: argparse.ArgumentParser) -> None:
    """A single unlearning run's flags, with its defaults (`UnlearnSettings`); calibrate replaces them."""
    p.add_argument("--steps", type=int, default=UNLEARN.steps, help="optimizer steps")
    p.add_argument("--lr", type=float, default=UNLEARN.lr,
                   help="learning rate (default 2e-5 below 500M parameters, 1e-5 above, as open-unlearning)")
    p.add_argument("--eval-every", type=int, default=UNLEARN.eval_every)
    p.add_argument("--batch-size", type=int, default=UNLEARN.batch_size)
    p.add_argument("--checkpoint-every", type=int, default=UNLEARN.checkpoint_every, metavar="N",
                   help="save the unlearned copy and optimizer state every N evaluations (less often where "
                        "saving would take over 10%% of the time), so that a rerun of an interrupted run "
                        "continues from there (0: never; removed when the run finishes)")


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="builtin:world-facts",
                   help=f"builtin:NAME ({', '.join(BUILTINS)}; fictitious-authors:N picks N authors) or a "
                        ".json/.jsonl/.csv/.parquet file with question/answer")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N samples of the file (before the knowledge filter)")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--no-known-filter", action="store_true",
                   help="for built-in facts: keep facts the model gets wrong too")


def calibrate_args(p) -> None:
    """The flags of `calibrate` (and of `validate-prospective`, which runs or finds that calibration)."""
    model_args(p)
    data_args(p)
    split_args(p, DEFAULT.forget_fraction, DEFAULT.seed)
    p.add_argument("--methods", help="comma-separated unlearning methods (default %(default)s)")
    unlearn_args(p)
    p.add_argument("--q", type=float,
                   help="top/bottom fraction each method labels easy/hard (default %(default)s: ≥ 20 per class at "
                        f"the default size; the paper uses {PRESETS['paper'].calibration.q})")
    p.add_argument("--seeds",
                   help="unlearning seeds (data order, retain batches), comma-separated; ≥ 2 give the reliability "
                        "ceiling (default %(default)s; three or more on a GPU)")
    p.add_argument("--forget-sets", type=int,
                   help="cut the forget set into this many disjoint sets matched on the original NLL and unlearn "
                        "each on its own, outcomes pooled (TOFU's small forget sets; default %(default)s: the whole "
                        "set in each run)")
    p.add_argument("--folds", type=int, help="cross-fitting folds for out-of-fold CUD (default %(default)s)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for CIs (default %(default)s)")
    p.add_argument("--permutations", type=int, help="permutations for CUD's null (default %(default)s)")
    p.add_argument("--similarity", choices=list(SIMILARITIES))
    p.add_argument("--anchors", choices=list(ANCHORS),
                   help="the headline CUD: anchors from the methods' consensus labels, or each method's own "
                        "top/bottom-q sets (the paper's code; CUD = mean over methods); both are always reported")
    p.add_argument("--attribution-method", choices=list(METHODS),
                   help="edge attribution of the circuits (default %(default)s)")
    p.add_argument("--metric", choices=list(METRICS), help="attribution metric")
    p.add_argument("--baseline", choices=list(BASELINES), help="attribution baseline")
    p.add_argument("--edges", type=int, help="circuit size n")
    p.add_argument("--ig-steps", type=int, help="integration steps of the attribution (EAP-IG)")
    executor_args(p)
    p.add_argument("--fixed-steps", action="store_true",
                   help="no operating point: every unlearning run goes to --steps and every method votes in the "
                        "labels, whether it forgot or broke the model (smoke tests and the demo; no evidence)")
    p.add_argument("--diff-circuits", action="store_true",
                   help="also re-attribute each method's unlearned copy (first seed) and store the circuit diff "
                        "(about one scoring of the forget set per method); adds to a finished calibration")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="demo: every page filled in a few minutes on a laptop CPU (the first 120 facts, about 20 "
                        "of them forgotten, 3 methods x 8 steps; its numbers carry no evidence). paper: the published "
                        "CUD pipeline (eap-ig-activations, 5 steps, zero baseline, kl, 75 edges, cosine, q 0.125, "
                        "per-method anchors). Flags given explicitly win.")
    p.set_defaults(**flag_defaults(DEFAULT))  # after the flags: their defaults, and the defaults --help shows
