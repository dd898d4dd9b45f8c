"""The ablation grid's summary (artifact "ablation", see `cud_core/pipeline/ablation.py`) as tables and
Markdown, and the README's generated ablation section. Nothing here computes statistics."""
from __future__ import annotations

import numpy as np

from cud_core.difficulty.analysis import PRIMARY, TARGETS
from cud_core.difficulty.grid import FACTORS, GRID, cell_name
from cud_core.difficulty.summary import ci, fmt
from cud_core.report.document import ReadmeSection, inert, markdown_table, read_json, to_json

README = ReadmeSection("ablation", "ablate")
# the grid's text fields (settings, ids, the scoring runs a setting shared or reused): kept as written when
# read back, a null there included
TEXT_KEYS = ("grid", "ids", "reference", "not_run", "score_run", "scored_with", "reused_scoring", *FACTORS)


def cell_rows(summary: dict) -> list[dict]:
    """Every cell, in grid order; the reference (the calibration's own setting) is marked. Attribution
    settings that were not run appear as one row each, standing for their cells."""
    ref = summary["reference"]
    rows = []
    for c in summary["cells"]:
        row = {f: str(c[f]) for f in FACTORS}
        row["ref"] = "◆" if all(c[f] == ref.get(f) for f in FACTORS) else ""
        for t in TARGETS:
            row[f"ρ {t}"] = f"{fmt(c[t]['spearman'])} {ci(c[t]['spearman_ci'])}"
        row["partial ρ"] = f"{fmt(c['partial_spearman'])} {ci(c['partial_spearman_ci'])}"
        row["AUROC"] = f"{fmt(c['auroc'])} {ci(c['auroc_ci'])}"
        row["p (one-sided)"] = fmt(c["p"], 3)
        row["Holm p"] = fmt(c["p_holm"], 3)
        row["wall s"] = fmt(c["wall_s"], 1)
        rows.append(row)
    for s in summary["not_run"]:
        row = {f: str(s.get(f, "all")) for f in FACTORS}
        row.update({"ref": "", **{f"ρ {t}": "not run" for t in TARGETS}, "partial ρ": f"({s['cells']} cells)",
                    "AUROC": "–", "p (one-sided)": "–", "Holm p": "–", "wall s": "–"})
        rows.append(row)
    return rows


def effect_rows(summary: dict) -> list[dict]:
    return [{"factor": e["factor"], "level": e["level"], "cells": e["cells"],
             f"mean ρ {PRIMARY}": fmt(e["mean_rho"]), "range": f"{fmt(e['min_rho'])} … {fmt(e['max_rho'])}",
             "|Δρ| changing only this factor (mean / max)": f"{fmt(e['mean_abs_delta'])} / {fmt(e['max_abs_delta'])}"}
            for e in summary["effects"]]


def timing_rows(summary: dict) -> list[dict]:
    """Seconds per attribution setting; settings scored from the same passes each show their share."""
    return [{"attribution setting": k.replace("|", " / "),
             "scoring s": f"reused ({v['reused_scoring']}'s)" if isinstance(v.get("reused_scoring"), str)
             else fmt(v["scoring_s"], 0) + "".join(f" (share of passes with {o.replace('|', ' / ')})"
                                                   for o in v.get("scored_with") or []),
             "cells s": fmt(v["cells_s"], 0)} for k, v in summary["timings"].items()]


def headline(summary: dict) -> str:
    """What the grid shows, in sentences that follow from its numbers."""
    cells = summary["cells"]
    if not cells:
        return "No cell has been computed yet."
    rho = np.array([c[PRIMARY]["spearman"] for c in cells], float)
    significant = [c for c in cells if c["significant"]]
    ref = [c for c in cells if all(c[f] == summary["reference"].get(f) for f in FACTORS)]
    finite = rho[np.isfinite(rho)]
    spread = (f"held-out ρ({PRIMARY}) ranges from {fmt(finite.min())} to {fmt(finite.max())} (median "
              f"{fmt(float(np.median(finite)))})" if finite.size else f"no cell has a held-out ρ({PRIMARY})")
    text = (f"{summary['n_run']} of {summary['n_cells']} cells computed; {spread}. "
            f"{len(significant)} cell(s) have ρ > 0 after Holm's correction over the {len(cells)} computed cells "
            f"(family-wise α = {summary['alpha']:.2f}).")
    if ref:
        r = ref[0][PRIMARY]
        text += (f" The calibration's own setting ({cell_name(ref[0])}) gives ρ = {fmt(r['spearman'])} "
                 f"{ci(r['spearman_ci'])}.")
    if summary["not_run"]:
        per_method = {}
        for s in summary["not_run"]:
            per_method[s["attribution"]] = per_method.get(s["attribution"], 0) + 1
        of = len(GRID["metric"]) * len(GRID["baseline"])
        text += (" Not run: " + ", ".join(f"{m} ({k} of {of} metric × baseline settings)" if k < of else m
                                          for m, k in sorted(per_method.items()))
                 + f" ({sum(s['cells'] for s in summary['not_run'])} cells).")
    impossible = [c for c in cells if c.get("unavailable")]
    if impossible:  # anchors that cannot be built (e.g. no consensus label in a fold): NaN cells
        reasons = sorted({c["unavailable"].split(":")[0] for c in impossible})
        text += (f" {len(impossible)} computed cell(s) have no numbers because their anchors could not be built "
                 f"({', '.join(reasons)}; e.g. {impossible[0]['unavailable']}).")
    return text


def markdown(summary: dict, run: dict, heading: str = "###") -> str:
    run = inert(run)
    settings = (f"Run `{run['id']}` ({run['model']}, {run['dataset']}); n = {summary['n_forget']} forget samples, "
                f"{summary['n_labelled']} labelled (q = {summary['q']}), {summary['folds']} folds, "
                f"{summary['n_boot']} bootstrap resamples; p: {summary['test']}; correction: Holm over the "
                f"computed cells. The grid (fixed before any result): "
                + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in summary["grid"].items()) + ".")
    parts = [f"{heading} Ablation grid: {run['dataset']} on {run['model']}", "", f"**Result.** {headline(summary)}",
             "", settings, "",
             "Every cell reuses the calibration's unlearning outcomes, labels and folds; CUD is out-of-fold. "
             "ρ is Spearman's correlation with hardness (method mean), brackets are 95% bootstrap CIs; "
             "◆ marks the calibration's own setting; wall s = the cell's share of its attribution setting's "
             "scoring plus its own analysis (a setting whose scoring run a calibration had already made — "
             "\"reused\" below — counts only the look-up).", "",
             f"{heading}# How much each setting moves the held-out ρ", "", markdown_table(effect_rows(summary)), "",
             f"{heading}# Time per attribution setting", "", markdown_table(timing_rows(summary)), "",
             "<details><summary>Every cell</summary>", "", markdown_table(cell_rows(summary)), "", "</details>"]
    return "\n".join(parts)


def readme_section(summary: dict, run: dict, command: str) -> str:
    """The README's generated ablation section (`README.replace` puts it in)."""
    return README.render([markdown(summary, run)], command)


def as_json(summary: dict, run: dict) -> str:
    return to_json(summary, run, indent=1)


def from_json(path) -> tuple[dict, dict]:
    """A stored `--format json` summary: (summary, run) with NaN restored where null was written."""
    return read_json(path, "cells", "ablation summary", TEXT_KEYS)
