"""The prospective validation's report (`pipeline.prospective`) as Markdown tables; nothing computed here."""
from __future__ import annotations

from pathlib import Path

from cud_core.difficulty.regimes import PROTOCOL, Protocol, within_bound
from cud_core.difficulty.summary import ci, fmt
from cud_core.pipeline.prospective import EXPECTED_SIGN, MEASURES
from cud_core.report.document import ReadmeSection, markdown_table, read_report


def forward_rows(r: dict) -> list[dict]:
    return [{"predictor (scored before B was unlearned)": name, "ρ with B's hardness": f"{fmt(v['spearman'])} "
             f"{ci(v['spearman_ci'])}", "n": v["n"]} for name, v in r["prospective"].items()]


def _readings(r: dict, budget: bool) -> dict:
    """{selection: its comparison} at the operating-point step, or (`budget`) at matched utility cost (absent
    from reports made before that reading existed)."""
    return {kind: t.get("budget") if budget else t for kind, t in r["interventional"].items()
            if not budget or t.get("budget")}


def interventional_rows(r: dict, budget: bool = False) -> list[dict]:
    rows = []
    for kind, t in _readings(r, budget).items():
        nll = r["interventional"][kind]
        for m, d in t["measures"].items():
            rows.append({"selection": "CUD extremes" if kind == "plain" else f"CUD extremes within {r['strata']} NLL "
                                                                              "strata",
                         "measure": MEASURES[m], "CUD-easy group": fmt(d["easy"]), "CUD-hard group": fmt(d["hard"]),
                         "hard − easy": f"{fmt(d['difference'])} {ci(d['ci'])}",
                         "CUD predicts": "< 0" if EXPECTED_SIGN[m] < 0 else "> 0",
                         "original NLL (easy, hard)": f"{fmt(nll['nll_easy'])}, {fmt(nll['nll_hard'])}"})
    return rows


def utility_rows(r: dict, budget: bool = False) -> list[dict]:
    protocol = Protocol.from_dict(r["protocol"]) if r.get("protocol") else PROTOCOL
    return [{"selection": kind, "group": g, "run": run, "step": u["step"],
             "held-out NLL (step 0 → here)": f"{fmt(u['holdout_nll_0'])} → {fmt(u['holdout_nll'])}",
             "within the utility bound": ("yes" if within_bound(u["holdout_nll"], u["holdout_nll_0"], protocol)
                                          else "no")}
            for kind, t in _readings(r, budget).items() for g, runs in t["utility"].items()
            for run, u in runs.items()]


README = ReadmeSection("prospective", "validate-prospective")


def halves_text(r: dict) -> str:
    """What halves A and B are: the two halves of one forget set, each unlearned as a whole, or a pooled
    calibration's forget sets, each unlearned on its own."""
    sets = r.get("forget_sets")
    a = f"Half A: {r['n_a']} samples"
    b = f"half B: {r['n_b']}"
    if sets:
        name = lambda ks: "forget sets " + ", ".join(map(str, ks))  # noqa: E731
        a += f" ({name(sets['a'])} of the calibration)"
        b += (f" ({name(sets['b'])}; each set of {'/'.join(map(str, sets['sizes']))} samples unlearned on its own "
              "under the protocol)")
    return (f"{a}; {r['labels_a']['easy']} easy, {r['labels_a']['hard']} hard labels from A's outcomes alone; {b}")


def markdown(r: dict, heading: str = "##") -> str:
    rates = ", ".join(f"{m} {v:.2g}" for m, v in r["rates"].items())
    return "\n".join([
        f"{heading} Prospective validation of {r['calibration']}"
        + (f" ({r['data']} on {r['model']})" if r.get("data") else ""), "", f"**Verdict.** {r['verdict']}", "",
        f"{halves_text(r)}; methods {', '.join(r['methods'])} at {rates}; {r['steps']} steps.", "",
        f"{heading}# Before unlearning: CUD from A's anchors on B", "", markdown_table(forward_rows(r)), "",
        f"{heading}# Interventional: the {r['k']} CUD-easiest and {r['k']} CUD-hardest of B, unlearned separately",
        "", markdown_table(interventional_rows(r)), "",
        "Read at each method's operating-point step on B (" + ", ".join(f"{m} {s}" for m, s in r["at_step"].items())
        + "); forgotten at: over the full budget (never: steps + 1); 95% bootstrap CIs resampling each group.", "",
        f"{heading}# Held-out utility of the group runs at that step", "", markdown_table(utility_rows(r)), "",
        *budget_markdown(r, heading)])


def budget_markdown(r: dict, heading: str) -> list[str]:
    """The utility-matched reading's tables (none for a report from before it)."""
    if not _readings(r, budget=True):
        return []
    return [f"{heading}# The same groups at matched utility cost", "",
            "Each group run read at its last evaluation before its held-out NLL first left the utility bound "
            "(step 0 when it left at the first evaluation): how much of each group can be forgotten without "
            "breaking the model. Forgotten at: up to that evaluation (never: steps + 1).", "",
            markdown_table(interventional_rows(r, budget=True)), "", markdown_table(utility_rows(r, budget=True)),
            ""]


def readme_section(reports: list[dict], command: str) -> str:
    """The README section of stored prospective reports (`README` markers; `command` regenerates it)."""
    return README.render([markdown(r, heading="###") for r in reports], command)


def from_json(path: Path) -> dict:
    """A stored `validate-prospective --format json` report; ValueError naming the file otherwise."""
    return read_report(path, ("verdict", "prospective", "interventional"), "prospective validation report")
