"""A transfer report (`pipeline.transfer`) as Markdown; nothing computed here."""
from __future__ import annotations

from pathlib import Path

from cud_core.difficulty import transfer as measures
from cud_core.difficulty.summary import ci, fmt
from cud_core.report.document import ReadmeSection, markdown_table, read_report
from cud_core.store.escaping import markdown_inline

README = ReadmeSection("transfer", "transfer")


def _names(r: dict, escape) -> dict:
    source = escape(r["anchors_data"])
    return {"cud_transfer": f"CUD, anchors from {source}",
            "representation_transfer": f"hidden states, anchors from {source}",
            "cud_own": "CUD, the target's own anchors (out of fold)",
            "original_nll": "original answer NLL (high = easy expected)"}


def rows(r: dict, escape=markdown_inline) -> list[dict]:
    """The predictors' table (`escape` makes the data's name inert where the table is Markdown)."""
    names = _names(r, escape)
    return [{"predictor": names.get(k, k), "ρ with hardness": f"{fmt(v['spearman'])} {ci(v['spearman_ci'])}",
             "partial ρ given NLL": (f"{fmt(v['partial_spearman'])} {ci(v['partial_spearman_ci'])}"
                                                  if k != "original_nll" else "–"),
             "AUROC (labels)": f"{fmt(v['auroc'])} {ci(v['auroc_ci'])}",
             "permutation p": fmt(v["permutation_p"], 3) if "permutation_p" in v else "–", "n": v["n"]}
            for k, v in r["predictors"].items()]


def settings_text(r: dict, escape=markdown_inline) -> str:
    labels = r["source_labels"]
    left = f"; {len(r['left_out'])} target samples also in the anchors' calibration left out" if r["left_out"] else ""
    return (f"Anchors: calibration {r['anchors']} ({escape(r['anchors_data'])}; {r['anchor_kind']} anchors "
            f"from all its labels, {labels['easy']} easy and {labels['hard']} hard; {r['similarity']}). Target: "
            f"calibration {r['target']} ({escape(r['target_data'])}; hardness = −NLL after unlearning, mean "
            f"over {', '.join(r['target_methods'])}){left}. Model {escape(r['model'])} (fingerprint "
            f"{r['model_fingerprint']}), the same weights for both. 95% bootstrap CIs ({r['n_boot']} resamples, "
            f"shared by every row), one-sided permutation p ({r['n_permutations']} shuffles of the hardness).")


def verdict(r: dict, escape=markdown_inline) -> str:
    """The verdict with the data names made inert in Markdown (they may come from file names)."""
    return measures.verdict({**r, "anchors_data": escape(r["anchors_data"]), "target_data": escape(r["target_data"])})


def markdown(r: dict, heading: str = "##") -> str:
    d = r["transfer_minus_own"]
    return "\n".join([
        f"{heading} Anchors of {markdown_inline(r['anchors_data'])} on {markdown_inline(r['target_data'])}", "",
        f"**Verdict.** {verdict(r)}", "", settings_text(r), "", markdown_table(rows(r)), "",
        f"Transferred CUD minus the target's own out-of-fold CUD, ρ: {fmt(d['difference'])} {ci(d['ci'])} (paired).",
        *(f"Not computed, {_names(r, markdown_inline).get(k, k)}: {markdown_inline(why)}."
          for k, why in r.get("unavailable", {}).items()), ""])


def readme_section(reports: list[dict], command: str) -> str:
    """The README section of stored transfer reports (`README` markers; `command` regenerates it)."""
    return README.render([markdown(r, heading="###") for r in reports], command)


def from_json(path: Path) -> dict:
    """A stored `transfer --format json` report; ValueError naming the file otherwise."""
    return read_report(path, ("verdict", "predictors", "transfer_minus_own"), "transfer report")
