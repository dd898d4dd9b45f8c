"""A calibration's validation as tables, Markdown, offline HTML and the README's results section.

Every number comes from the `validation_report` artifact the calibration stored (see `analysis.py`);
nothing here computes statistics.
"""
from __future__ import annotations

import html

from cud_core.difficulty.analysis import PRIMARY, TARGETS
from cud_core.difficulty.claims import depth_sentence
from cud_core.difficulty.regimes import bound_text
from cud_core.difficulty.regimes import rows as regime_rows
from cud_core.difficulty.summary import ci, fmt, summary_rows
from cud_core.pipeline.faithfulness import rows as faithfulness_rows
from cud_core.report import charts
from cud_core.report.document import ReadmeSection, inert, markdown_table, read_json, to_json

README = ReadmeSection("results", "report")
# keys whose null is a value of its own, not a number left out: kept as written when read back
TEXT_KEYS = ("label", "preset", "reaches", "regimes", "protocol", "voting_methods")


def versus_rows(r: dict) -> list[dict]:
    return [{"baseline": b, **{f"Δρ {t}": f"{fmt(v[t]['difference'])} {ci(v[t]['ci'])}" for t in TARGETS}}
            for b, v in r["cud_vs_baseline"].items()]


def reliability_rows(r: dict) -> list[dict]:
    rel = r["reliability"]
    rows = [{"method": m, "test–retest ρ": f"{fmt(v['spearman'])} {ci(v['spearman_ci'])}",
             "seeds": ", ".join(map(str, v["seeds"]))} for m, v in rel["test_retest"].items()]
    mm = rel.get("method_mean")
    if mm:
        rows.append({"method": "mean over methods", "test–retest ρ": f"{fmt(mm['test_retest'])} "
                                                                      f"{ci(mm['test_retest_ci'])}",
                     "seeds": f"reliability of the seed mean {fmt(mm['reliability'])}, ceiling √ = "
                              f"{fmt(mm['ceiling'])}"})
    return rows


def oof_vs_in_sample_rows(r: dict) -> list[dict]:
    """Out-of-fold CUD next to the in-sample numbers of the same kind of anchors (the headline's, as
    `in_sample["anchors"]` names it; consensus anchors in a report that does not name them)."""
    name = "cud_per_method" if r["in_sample"].get("anchors") == "per-method" else "cud"
    cud, ins = r["predictors"][name], r["in_sample"]
    oof, in_sample = "out-of-fold (evidence)", "in-sample (paper's protocol, circular)"
    rows = []
    for t in TARGETS:
        rows.append({"measure": f"Spearman ρ, {t}", oof: f"{fmt(cud[t]['spearman'])} {ci(cud[t]['spearman_ci'])}",
                     in_sample: f"{fmt(ins[t]['spearman'])} {ci(ins[t]['spearman_ci'])}"})
    rows.append({"measure": "AUROC hard vs easy", oof: f"{fmt(cud['auroc'])} {ci(cud['auroc_ci'])}",
                 in_sample: f"{fmt(ins['auroc'])} {ci(ins['auroc_ci'])}"})
    return rows


def incremental_rows(r: dict) -> list[dict]:
    """Per predictor: the out-of-fold prediction of hardness from the original NLL alone and with it."""
    rows = []
    for name, v in (r.get("incremental") or {}).items():
        rho, auc = v["spearman"], v["auroc"]
        rows.append({"added to original NLL": name, "ρ NLL alone": fmt(rho["base"]), "ρ NLL + it": fmt(rho["full"]),
                     "ρ gain": f"{fmt(rho['gain'])} {ci(rho['gain_ci'])}", "AUROC NLL alone": fmt(auc["base"]),
                     "AUROC NLL + it": fmt(auc["full"]), "AUROC gain": f"{fmt(auc['gain'])} {ci(auc['gain_ci'])}",
                     "permutation p": fmt(v["permutation_p"], 3), "n": v["n"]})
    return rows


def lomo_rows(r: dict) -> list[dict]:
    """Per held-out method: CUD from the other methods' labels, and the other methods' own mean hardness."""
    return [{"held-out method": m, "labels from": f"{v['n_methods']} other methods",
             "ρ CUD (others' labels)": (f"{fmt(v['cud']['spearman'])} {ci(v['cud']['spearman_ci'])}" if "cud" in v
                                        else f"not computed: {v.get('unavailable', '')}"),
             "ρ others' mean hardness": f"{fmt(v['others']['spearman'])} {ci(v['others']['spearman_ci'])}",
             "n": v["n"]} for m, v in (r.get("leave_one_method_out") or {}).items()]


def depth_rows(r: dict) -> list[dict]:
    return [{"measure": v["label"], "ρ with hardness": f"{fmt(v['spearman'])} {ci(v['spearman_ci'])}",
             "mean easy": fmt(v.get("mean_easy")), "mean hard": fmt(v.get("mean_hard")),
             "hard − easy": f"{fmt(v.get('difference'))} {ci(v.get('difference_ci', [None, None]))}",
             "n (easy, hard)": f"{v['n']} ({v['n_easy']}, {v['n_hard']})"} for v in (r.get("depth") or {}).values()]


INCREMENTAL_NOTE = ("Cross-fitted on the validation's folds: rank(hardness) ~ rank(original NLL) [+ rank(predictor)] "
                    "by least squares on the other folds, predicted on the held-out fold; the gain is paired (same "
                    "resamples); the permutation p shuffles the added predictor across samples.")
LOMO_NOTE = ("\"Stable across methods\" as a test: CUD cross-fitted from the labels of the other methods alone, "
             "against the held-out method's hardness (−NLL after); beside it how well the other methods' own mean "
             "hardness predicts it (what any predictor built from them can carry over).")
DEPTH_NOTE = ("The paper reports that hard samples use deeper, later circuits (positive ρ, hard − easy > 0). "
              "Measured here on the voting methods' outcomes")


def claims_parts(r: dict, heading: str) -> list[str]:
    """The Markdown sections of the incremental, leave-one-method-out and depth tests (none in older reports)."""
    parts = []
    if r.get("incremental"):
        parts += [f"{heading}# What the circuit adds beyond the original NLL (out-of-fold)", "",
                  markdown_table(incremental_rows(r)), "", INCREMENTAL_NOTE, ""]
    if r.get("leave_one_method_out"):
        parts += [f"{heading}# Leave one method out", "", markdown_table(lomo_rows(r)), "", LOMO_NOTE, ""]
    if r.get("depth"):
        parts += [f"{heading}# Circuit depth and hardness", "", markdown_table(depth_rows(r)), "",
                  f"{DEPTH_NOTE}: {depth_sentence(r['depth'])}", ""]
    return parts


def unavailable_text(r: dict) -> str:
    """Which CUD could not be computed, and why (e.g. consensus anchors without any consensus label)."""
    return " ".join(f"{name} not computed: {why}." for name, why in (r.get("unavailable") or {}).items())


def settings_line(r: dict, run: dict | None = None) -> str:
    head = f"run `{run['id']}` ({run['model']}, {run['dataset']}); " if run else ""
    fewer = ("" if r.get("folds_requested", r["folds"]) == r["folds"] else
             f" (fewer than the {r['folds_requested']} requested: a fold lacked an easy or hard sample)")
    return (f"{head}n = {r['n_forget']} forget samples, {r['n_labelled']} labelled ({r['n_easy']} easy, "
            f"{r['n_hard']} hard; q = {r['q']}){_sets_text(r)}, methods {', '.join(r['methods'])}, seeds "
            f"{', '.join(map(str, r['seeds']))}, {r['steps']} unlearning steps, {r['folds']} folds{fewer}, "
            f"{r['n_boot']} bootstrap resamples, {r['n_permutations']} permutations, {r['similarity']} similarity"
            + _attribution_text(r))


def _sets_text(r: dict) -> str:
    sets = r.get("forget_sets")
    if not sets:
        return ""
    used = [k + 1 for k, x in enumerate(sets) if x["kept"]]
    left = [k + 1 for k, x in enumerate(sets) if not x["kept"]]
    return (f", outcomes pooled over {len(used)} of {len(sets)} disjoint forget sets "
            f"({'/'.join(str(x['n']) for x in sets)} samples, each unlearned on its own; a set counts when every "
            "method reached a valid operating point on it with every seed"
            + (f"; left out: set {', '.join(map(str, left))}" if left else "") + ")")


# the scoring settings a report carries as `attribution` (from the run's stored `score` config)
ATTRIBUTION_KEYS = ("method", "steps", "baseline", "metric", "n_edges")


def _attribution_text(r: dict) -> str:
    """The preset and attribution settings, where the report has them (empty for a report without them)."""
    a = r.get("attribution") or {}
    if any(a.get(k) is None for k in ATTRIBUTION_KEYS):
        return ""
    steps = "" if a["method"] == "eap" else f"{a['steps']} steps, "
    return (f"; preset {r.get('preset', 'default')}: {a['method']} attribution ({steps}{a['baseline']} "
            f"baseline, {a['metric']} metric), {a['n_edges']}-edge circuits, {r.get('anchors', 'consensus')} anchors")


def markdown(r: dict, run: dict | None = None, heading: str = "##") -> str:
    run = inert(run)
    head = [f"{heading} Validation" + (f" of {run['id']}" if run else ""), "", f"**Verdict.** {r['verdict']}", ""]
    if regimes_only(r):
        return "\n".join([*head, *regimes_parts(r, heading),
                          *(["", f"Time per stage (s): {stage_times(r)}."] if r.get("timings") else [])]) + "\n"
    parts = [*head, f"Settings: {settings_line(r, run)}.", "",
             "ρ is Spearman's correlation with *hardness* (−NLL after unlearning, −ΔNLL, or the step the answer "
             "was forgotten at), averaged over methods and seeds; a positive ρ means a high value goes with hard "
             "samples. Brackets are 95% bootstrap CIs over samples. CUD is out-of-fold throughout.", "",
             f"{heading}# Predictors (out-of-fold)", "", markdown_table(summary_rows(r)), "",
             *([unavailable_text(r), ""] if r.get("unavailable") else []),
             f"{heading}# CUD minus each baseline (paired bootstrap; each predictor oriented by its expected "
             "direction)",
             "", markdown_table(versus_rows(r)), "",
             f"{heading}# Out-of-fold vs in-sample CUD", "", markdown_table(oof_vs_in_sample_rows(r)), "",
             f"{heading}# Reliability ceiling (test–retest across unlearning seeds)", "",
             markdown_table(reliability_rows(r)) or "(one seed: no test–retest)", "",
             f"Kendall's W across methods: {fmt(r['reliability']['kendall_w'])}. Permutation p for CUD "
             f"(outcomes shuffled before labels, folds and anchors): {fmt(r['permutation_p'], 3)}.", "",
             *claims_parts(r, heading)]
    parts += [*regimes_parts(r, heading)]
    if r.get("faithfulness_anchors"):
        f = r["faithfulness_anchors"]
        parts += ["", f"{heading}# Faithfulness of the anchor circuits against circuit size", "",
                  markdown_table(faithfulness_rows(f)), "",
                  f"Greedy circuits of n = {', '.join(map(str, f['sizes']))} edges from each anchor's mean scores, "
                  "applied to each member's prompt; faithfulness = (circuit − all ablated) / (clean − all ablated), "
                  "mean over members; zero or mean (over forget samples) ablation outside the circuit."]
    if r.get("timings"):
        parts += ["", f"Time per stage (s, on the machine that ran it): {stage_times(r)}."]
    return "\n".join(parts) + "\n"


def regimes_only(r: dict | None) -> bool:
    """Whether a stored report is a negative result: the regimes alone, no method had a valid point."""
    return bool(r) and "regimes" in r and "predictors" not in r


def regimes_parts(r: dict, heading: str) -> list[str]:
    """The report's "Unlearning regimes" section, or why it has none."""
    if not r.get("regimes"):
        return [regimes_note(r)]
    p = r["protocol"]
    return [f"{heading}# Unlearning regimes", "", markdown_table(regime_rows(r["regimes"])), "",
            f"Operating point (fixed before any run): the first evaluation at which ≥ {p['efficacy']:.0%} of the "
            f"forget samples the model knew have answer probability < {p['threshold']:g}, with the "
            f"{bound_text(p)}; learning rates ×{p['up']} after an inert run, "
            f"×{p['down']} after a collapsed one. Held-out: known facts no loss saw. Only methods with a valid "
            "point in every seed vote in the labels."]


def regimes_note(r: dict) -> str:
    """Why a report has no regimes table."""
    if "regimes" not in r:
        return ("These runs predate the operating-point protocol: every method voted at its last step, whether "
                "it forgot or broke the model.")
    return "Run with --fixed-steps: every method voted at its last step (no operating point; not evidence)."


def runs_in(found: dict) -> int:
    """How many unlearning runs a calibration under the protocol made: every rate each first seed tried,
    plus the later seeds that ran (of each forget set: seeds keyed "SEED · set K")."""
    def later(r):
        first = next(iter(r["seeds"])).split(" · ")[0]
        return sum(s["verdict"] != "skipped" for k, s in r["seeds"].items() if k.split(" · ")[0] != first)
    return sum(len(r["search"]) + later(r) for r in found.values())


def stage_times(r: dict) -> str:
    """A report's stored stage times in one line, counting the unlearning runs its regimes record."""
    return timings_line(r["timings"], runs_in(r["regimes"]) if r.get("regimes") else None)


def timings_line(t: dict, runs: int | None = None) -> str:
    """The stored stage times in one line (`runs`: how many unlearning runs; default one per (method, seed))."""
    # a calibration of several forget sets stores each set's unlearning as "forget_set_K_of_N_s"
    unlearn = sum(v for k, v in t.items() if k.startswith(("unlearn_", "forget_set_")))
    total = t.get("scoring_s", 0) + unlearn + t.get("predictors_s", 0) + t.get("cud_and_validation_s", 0)
    runs = sum(k.startswith("unlearn_") for k in t) if runs is None else runs
    parts = [f"scoring {t.get('scoring_s', 0):.0f}",
             f"unlearning {unlearn:.0f} ({runs} runs)",
             f"baseline predictors {t.get('predictors_s', 0):.0f}",
             f"validation {t.get('cud_and_validation_s', 0):.0f}"]
    line = ", ".join(parts) + f"; total {total:.0f}"
    if "mrd_recomputed_s" in t:
        line += f"; MRD recomputed later under its authors' definition: {t['mrd_recomputed_s']:.0f}"
    if "predictors_recomputed_s" in t:
        line += f"; predictors added or recomputed later: {t['predictors_recomputed_s']:.0f}"
    reused = t.get("reused_unlearning") or {}
    if reused:  # `cud_core/pipeline/reuse.py`: their time is that of the check
        line += (f"; {len(reused)} unlearning runs reused from calibration {', '.join(sorted(set(reused.values())))} "
                 "after rerunning their first steps")
    return line


def as_json(r: dict, run: dict | None = None) -> str:
    """The report's numbers as one JSON object (NaN written as null)."""
    if regimes_only(r):
        return to_json(r, run)
    return to_json({**r, "n_labelled_per_class": {"easy": r["n_easy"], "hard": r["n_hard"]}}, run)


def html_report(r: dict, run: dict | None = None) -> str:
    """A self-contained HTML page: tables and SVG charts inline, no script, no external resource (a negative
    result: its Markdown, escaped, in a <pre>)."""
    if regimes_only(r):
        return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CUD validation</title>"
                f"</head><body><pre>{html.escape(markdown(r, run))}</pre></body></html>\n")
    def table(rows):
        if not rows:
            return "<p>(none)</p>"
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                       for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    title = "CUD validation" + (f" — {run['id']}" if run else "")
    svgs = "".join(f"<h3>{html.escape(t)}</h3>{charts.to_svg(charts.forest(r, t))}" for t in TARGETS)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}
th{{background:#f3f3f3}}.verdict{{font-size:1.1em;background:#f7f7ff;padding:.8em;\
border-left:4px solid #0072B2}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p class="verdict">{html.escape(r['verdict'])}</p>
<p>{html.escape(settings_line(r, run))}.</p>
<p>ρ: Spearman with hardness (high = hard to forget), mean over methods and seeds, 95% bootstrap CIs; CUD is
out-of-fold. The grey band is the target's reliability ceiling: no predictor can be expected beyond it.</p>
<h2>Predictors</h2>{table(summary_rows(r))}\
{f"<p>{html.escape(unavailable_text(r))}</p>" if r.get("unavailable") else ""}
<h2>Forest plots ({html.escape(PRIMARY)} first)</h2>{svgs}
<h2>CUD minus each baseline (paired)</h2>{table(versus_rows(r))}
<h2>Out-of-fold vs in-sample</h2>{table(oof_vs_in_sample_rows(r))}
<h2>Permutation null</h2><p>p = {fmt(r['permutation_p'], 3)}</p>{charts.to_svg(charts.null_histogram(r))}
<h2>Reliability ceiling</h2>{table(reliability_rows(r))}
<p>Kendall's W across methods: {fmt(r['reliability']['kendall_w'])}</p>
{_claims_html(r, table)}
<h2>Unlearning regimes</h2>{table(regime_rows(r["regimes"])) if r.get("regimes") else
                            f"<p>{html.escape(regimes_note(r))}</p>"}
</body></html>
"""


def _claims_html(r: dict, table) -> str:
    out = ""
    if r.get("incremental"):
        out += (f"<h2>What the circuit adds beyond the original NLL</h2>{table(incremental_rows(r))}"
                f"<p>{html.escape(INCREMENTAL_NOTE)}</p>")
    if r.get("leave_one_method_out"):
        out += f"<h2>Leave one method out</h2>{table(lomo_rows(r))}<p>{html.escape(LOMO_NOTE)}</p>"
    if r.get("depth"):
        out += (f"<h2>Circuit depth and hardness</h2>{table(depth_rows(r))}"
                f"<p>{html.escape(DEPTH_NOTE + ': ' + depth_sentence(r['depth']))}</p>")
    return out


def readme_section(reports: list[tuple[dict, dict]], command: str) -> str:
    """The README's generated results (`README.replace` puts them in): the command that regenerates
    them, then each run's report."""
    titles = []
    for r, run in reports:
        preset = (f", {r['preset']} preset ({r['n_forget']} forget samples)"
                  if r.get("preset") not in (None, "", "default") else "")
        regime = (", under the operating-point protocol" if r.get("regimes") else
                  ", before the operating-point protocol" if "regimes" not in r else ", fixed steps")
        titles.append(f"{inert(run)['dataset']} on {inert(run)['model']}{preset}{regime}")
    blocks = []
    for title, (r, run) in zip(titles, reports):
        if titles.count(title) > 1:  # runs that differ in their forget set only
            title += f" ({r['n_forget']} forget samples)"
        blocks.append(f"### {title}\n\n" + markdown(r, run, heading="###").split("\n", 2)[2])
    return README.render(blocks, command)


def from_json(path) -> tuple[dict, dict]:
    """A stored `--format json` report: (report, run) with NaN restored where null was written."""
    return read_json(path, "verdict", "CUD validation report", TEXT_KEYS)
