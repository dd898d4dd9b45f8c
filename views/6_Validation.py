"""Validation: is CUD evidence? Out-of-fold Spearman and AUROC with 95% CIs per target and method,
paired comparisons with every baseline, the permutation null, the reliability ceiling, and the
paper's in-sample numbers beside the honest ones (docs/method.md, validation protocol)."""
import shlex

import pandas as pd
import streamlit as st

from cud_core.difficulty.analysis import TARGETS
from cud_core.pipeline import transfer as transfer_runs
from cud_core.report import ablation as ablation_report
from cud_core.report import charts as vcharts
from cud_core.report import prospective as prospective_report
from cud_core.report import talk
from cud_core.report import transfer as transfer_report
from cud_core.report import validation as report
from views.ui import present, results, state
from views.ui.text import md


def regimes_panel(r: dict) -> None:
    """Each unlearning method's efficacy against held-out utility, its operating point, and who voted."""
    st.subheader("Unlearning regimes: did each method forget, and what did it cost?")
    if not r.get("regimes"):
        st.caption(md(report.regimes_note(r)))
        return
    p = r["protocol"]
    present.chart(vcharts.regimes(r["regimes"], p))
    st.dataframe(pd.DataFrame(report.regime_rows(r["regimes"])), hide_index=True)
    st.caption(md(f"Operating point, fixed before any run: the first evaluation at which ≥ {p['efficacy']:.0%} of "
                  f"the forget samples the model knew fall below answer probability {p['threshold']:g}, with the "
                  f"{report.bound_text(p)} (held-out: known facts no loss saw; dashed lines; ◆ the point). A "
                  "method without a valid point in every seed does not vote in the labels."))


sel, ws, runs = results.page("Validation", "No calibration for this model and dataset yet: run *Calibrate* on the "
                                           "home page (or `python -m cud_core calibrate`) first.")
cal = runs["calibrate"]
# a newer calibration where no method reached an operating point: a negative result, shown before the rest
newer = (c for c in state.runs(ws, "calibrate", sel, status="failed") if cal is None or c["created"] > cal["created"])
negative = next(((c, f) for c in newer if report.regimes_only(f := ws.load_artifact(c["id"], "validation_report"))),
                None)
if negative:
    neg, found = negative
    st.warning(f"**{md('Calibration ' + neg['id'] + ': ' + found['verdict'])}**"
               + (md(f" Below: the older calibration {cal['id']}.") if cal else ""))
    regimes_panel(found)
if cal is None:
    st.info("These circuits are scored but not calibrated: validation needs unlearning outcomes. Run *Calibrate* on "
            "the home page.")
    st.stop()
r = ws.load_artifact(cal["id"], "validation_report")
if r is None:
    st.warning(md(f"Calibration {cal['id']} was made before out-of-fold validation existed: its CUD is in-sample "
                  "and has no confidence intervals. Rerun *Calibrate* to validate it."))
    st.stop()

if present.on():  # the verdict's first clause as the headline; all of it, with the settings, one click away
    st.markdown(f"### {md(r['verdict'].split('; ')[0])}.")
    how = present.controls("The whole verdict, settings and how to read")
    how.markdown(md(r["verdict"]))
else:
    st.markdown(f"### {md(r['verdict'])}")
    how = st
how.caption(
    md(report.settings_line(r, cal)) + ". ρ is Spearman's correlation with *hardness* (high = hard to "
           "forget): −NLL after unlearning, −ΔNLL, or the step the answer was forgotten at, averaged over seeds. "
           "Brackets and bars are 95% bootstrap CIs over samples; CUD is out-of-fold everywhere on this page "
           "unless labelled *in-sample*.")

rel = r["reliability"].get("method_mean")
if rel and present.on():
    st.caption(f"Reliability ceiling: no predictor can be expected to exceed |ρ| ≈ {report.fmt(rel['ceiling'])} "
               "(grey band).")
elif rel:
    st.info(f"**Reliability ceiling.** The realised difficulty itself is noisy: its test–retest ρ between unlearning "
            f"seeds is {report.fmt(rel['test_retest'])} {report.ci(rel['test_retest_ci'])}, so the seed-mean target "
            f"has reliability {report.fmt(rel['reliability'])} and **no predictor can be expected to exceed "
            f"|ρ| ≈ {report.fmt(rel['ceiling'])}** (grey band below).")
elif not present.on():
    st.info("One unlearning seed: the target's reliability ceiling is unknown (calibrate with `--seeds 0,1`).")

target = present.controls("Target").radio("Target", list(TARGETS), horizontal=True, format_func=lambda t: {
    "nll_after": "NLL after unlearning", "delta_nll": "change in NLL", "forgotten_at": "step forgotten at"}[t])
st.subheader("Each predictor's ρ with hardness, per unlearning method")
present.chart(vcharts.forest(r, target), width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("Predictors (method mean)")
    st.dataframe(pd.DataFrame(report.summary_rows(r)), hide_index=True)
    st.caption("Partial ρ: with NLL after unlearning, controlling for the original answer NLL (rank residuals). "
               f"AUROC: hard (1) vs easy (0) over the {r['n_labelled']} labelled samples ({r['n_hard']} hard, "
               f"{r['n_easy']} easy), read in each predictor's expected direction (`high means`): 1 = separates "
               "them as expected, 0.5 = chance, below 0.5 = the opposite way.")
    if r.get("unavailable"):
        st.warning(report.unavailable_text(r))
with right:
    st.subheader("CUD minus each baseline")
    st.dataframe(pd.DataFrame(report.versus_rows(r)), hide_index=True)
    st.caption("Paired bootstrap (the same resamples for both); each predictor oriented by the direction expected "
               "before looking (a high original NLL is expected to mean easy). Positive = CUD ranks better.")

if r.get("incremental"):
    st.subheader("What the circuit adds beyond the original NLL")
    st.dataframe(pd.DataFrame(report.incremental_rows(r)), hide_index=True)
    st.caption(report.INCREMENTAL_NOTE)
if r.get("leave_one_method_out") or r.get("depth"):
    left, right = st.columns(2)
    with left:
        st.subheader("Leave one method out")
        st.dataframe(pd.DataFrame(report.lomo_rows(r)), hide_index=True)
        st.caption(md(report.LOMO_NOTE))
    with right:
        st.subheader("Circuit depth and hardness")
        st.dataframe(pd.DataFrame(report.depth_rows(r)), hide_index=True)
        st.caption(md(f"{report.DEPTH_NOTE}: {report.depth_sentence(r['depth'])}") if r.get("depth") else "")

regimes_panel(r)

st.subheader("Out-of-fold vs in-sample (the paper's protocol)")
st.dataframe(pd.DataFrame(report.oof_vs_in_sample_rows(r)), hide_index=True)
st.caption("In-sample: anchors built from the same labelled samples they are evaluated on — circular and optimistic "
           "by construction; shown only to make that optimism visible.")

left, right = st.columns(2)
with left:
    st.subheader("Permutation null")
    present.chart(vcharts.null_histogram(r), width="stretch")
    st.caption(f"Outcomes shuffled across samples before labels, folds and anchors are built "
               f"({r['n_permutations']} permutations); red: CUD's observed ρ. One-sided p = "
               f"{report.fmt(r['permutation_p'], 3)}.")
with right:
    st.subheader("Reliability across seeds")
    if r["reliability"]["test_retest"]:
        st.dataframe(pd.DataFrame(report.reliability_rows(r)), hide_index=True)
    else:
        st.caption("One unlearning seed: no method has a second run to compare with, so there is no test–retest "
                   "reliability (calibrate with `--seeds 0,1`).")
    st.caption(f"Kendall's W across methods (agreement of their difficulty rankings): "
               f"{report.fmt(r['reliability']['kendall_w'])}.")

st.subheader("Prospective and interventional")
prospective = next((p for p in ws.list_runs("prospective") if p["status"] == "done"
                    and p["config"].get("calibration") == cal["id"]), None)
if prospective is None:
    st.caption("Folds only simulate *before unlearning*. `python -m cud_core validate-prospective` (with the "
               "calibration's flags) unlearns half A, scores half B's CUD before B is unlearned, then unlearns B "
               "and its CUD-easiest and CUD-hardest groups separately; its result appears here.")
else:
    pr = ws.load_artifact(prospective["id"], "prospective_report")
    st.markdown(f"**{md(pr['verdict'])}**")
    left, right = st.columns(2)
    left.dataframe(pd.DataFrame(prospective_report.forward_rows(pr)), hide_index=True)
    right.dataframe(pd.DataFrame(prospective_report.utility_rows(pr)), hide_index=True)
    st.dataframe(pd.DataFrame(prospective_report.interventional_rows(pr)), hide_index=True)
    budgeted = prospective_report.interventional_rows(pr, budget=True)
    if budgeted:
        st.caption("The same groups at matched utility cost: each run read at its last evaluation before its "
                   "held-out NLL left the utility bound.")
        left, right = st.columns(2)
        left.dataframe(pd.DataFrame(budgeted), hide_index=True)
        right.dataframe(pd.DataFrame(prospective_report.utility_rows(pr, budget=True)), hide_index=True)

st.subheader("Anchors from another calibration")
transfers = transfer_runs.reports_for(ws, cal["id"])
if not transfers:
    st.caption("None yet. Another calibration's anchors can be tested on this one's forget samples (same model "
               "weights, e.g. another dataset); the result appears here:")
    st.code(f"python -m cud_core transfer --workspace {shlex.quote(str(ws.root))} --anchors OTHER "
            f"--target {shlex.quote(cal['id'])}", language="bash")
for tr in transfers:
    st.markdown(f"**{transfer_report.verdict(tr, escape=md)}**")
    st.dataframe(pd.DataFrame(transfer_report.rows(tr, escape=str)), hide_index=True)
    st.caption(transfer_report.settings_text(tr, escape=md))

st.subheader("Ablation grid")
ablation = ws.load_artifact(cal["id"], "ablation")
if ablation is None:
    st.caption("No ablation grid for this calibration yet. Run it from a terminal (it re-scores the forget set "
               "under every attribution setting and reuses the unlearning outcomes; resumable):")
    st.code(f"python -m cud_core ablate --workspace {shlex.quote(str(ws.root))} --run {cal['id']}", language="bash")
else:
    st.markdown(md(ablation_report.headline(ablation)))
    st.caption("Every cell is out-of-fold on the calibration's own outcomes, labels and folds; the grid was fixed "
               "before any result. Click a column to sort. *Significant* uses Holm's correction over every computed "
               "cell (family-wise α = 5%, one-sided ρ > 0); no cell is a winner without it. ◆ / *own setting*: the "
               "calibration's settings.")
    st.dataframe(vcharts.ablation_frame(ablation, target), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("ρ", "ρ low", "ρ high", "partial ρ", "AUROC", "p", "Holm p")})
    if ablation["not_run"]:
        st.caption(md("Not run (reported, not dropped): " + "; ".join(
            f"{s['attribution']} / {s['metric']} / {s['baseline']} ({s['cells']} cells)" for s in ablation["not_run"])))
    st.markdown("**Stability: how much each setting moves the held-out ρ, and whether it reorders the samples**")
    factor = st.selectbox("Setting", list(ablation["grid"]), key="ablation_factor",
                          format_func=lambda f: f.replace("_", " "))
    left, right = st.columns(2)
    with left:
        present.chart(vcharts.ablation_strip(ablation, factor, target), width="stretch")
        st.caption("Each dot is a cell (bars: 95% CIs); ◆ the calibration's own setting.")
    with right:
        present.chart(vcharts.agreement_heatmap(ablation, factor), width="stretch")
        st.caption("Spearman between the CUD rankings of cells that differ only in this setting, averaged over the "
                   "matched cells: 1 = the same ranking of samples.")
    st.dataframe(pd.DataFrame(ablation_report.effect_rows(ablation)), hide_index=True)

st.download_button("Report (offline HTML)", report.html_report(r, cal), file_name=f"{cal['id']}.html",
                   mime="text/html")
st.download_button("Numbers (JSON)", report.as_json(r, cal), file_name=f"{cal['id']}.json", mime="application/json")
st.download_button("Talk pack (offline HTML slideshow)", lambda: talk.slideshow_html(talk.slides(ws, cal),
                                                                                      f"CUD · {cal['id']}"),
                   file_name=f"talk-{cal['id']}.html", mime="text/html",
                   help="the key figures of this calibration, one per slide (← / → to move), each with its title and "
                        "settings; `python -m cud_core talk-pack` also writes every figure as SVG and PNG")
