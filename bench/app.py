"""Benchmark the app's responsiveness. Prints one JSON line.

Builds a workspace with synthetic stored results for the embedded model on world-facts (N samples,
edge scores over SmolLM2's 123,211 edges, a calibration with curves), then times page script runs
through Streamlit's AppTest:

- home_first_s: a fresh Python process opening the home page (imports + cached model load + page);
- rankings_s: the Rankings page with N samples (the table, filters and sparklines);
- rankings_filter_s: a filter change on that table;
- circuit_s / circuit_select_s: the Circuit page, and a rerun after selecting another sample
  (75-edge circuit: greedy cut of the stored scores, statistics, offline pyvis HTML);
- newcomer (bench/newcomer.py, with its targets): a default Score of 10 forget samples of the
  embedded model from a fresh workspace (first progress ≤ 10 s, total ≤ 3 min on 2 cores), the Demo
  preset (≤ 5 min) and Stop latency (≤ 5 s), through the app's job queue.

    python bench/app.py [--samples 4000] [--part all|pages|newcomer] [--skip-demo] [--stop-after S ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"

import newcomer
import torch

from cud_core.data.samples import Sample, load_builtin
from cud_core.engine.attribution import attribute
from cud_core.engine.circuits import as_vector
from cud_core.engine.graph import Graph
from cud_core.engine.models import load_model
from cud_core.store.workspace import Workspace

MODEL, DATA = "SmolLM2-135M-Instruct", "builtin:world-facts"


def synthetic_workspace(root: Path, n: int) -> list[str]:
    g = Graph(30, 9)
    ws = Workspace(root)
    samples = [Sample(f"Synthetic question number {i}?", f"Answer {i}.", f"s{i:05d}") for i in range(n)]
    ids = [s.id for s in samples]
    gen = torch.Generator().manual_seed(0)
    score = ws.create_run("score", MODEL, DATA, {"n_edges": 75, "bench": True})
    ws.save_samples(score, samples)
    ws.save_artifact(score, "graph", {"n_layers": 30, "n_heads": 9, "parallel": False})
    # real EAP scores of the embedded model for the first 8 samples (what the circuit page cuts)
    lm = load_model("embedded", device="cpu")
    facts = load_builtin("world-facts")[:8]
    real = attribute(lm.model, lm.tokenizer, facts, method="eap", batch_size=8)
    ws.save_tensors(score, "scores-000000", {i: as_vector(real[k], g).half() for k, i in enumerate(ids[:8])})
    stats = {"n_edges": 60, "n_nodes": 30, "depth_com": 0.5, "longest_path": 9, "mean_edge_length": 4.0,
             "share_heads": 0.7, "nodes_per_layer": [1] * 30, "edges_per_layer": [2] * 31,
             "edge_length_hist": [3] * 32}
    ws.save_results(score, {i: {"answer_nll": 0.5, "answer_prob": 0.6, "exact_match": 1.0,
                                "extraction_strength": 0.9, "circuit": stats} for i in ids})
    ws.set_status(score, "done")
    cal = ws.create_run("calibrate", MODEL, DATA, {"bench": True})
    ws.save_samples(cal, samples)
    ws.save_artifact(cal, "score_run", score)
    methods = ("grad_diff", "npo", "simnpo", "rmu", "undial")
    for m in methods:
        ws.save_artifact(cal, f"curve-{m}", {"steps": [0, 5, 10], "curve": [{i: 0.5 + k * (j % 7) / 7 for j, i in
                                                                            enumerate(ids)} for k in range(3)]})
    r = torch.rand(n, generator=gen).tolist()
    ws.save_results(cal, {i: {"cud": r[j], "bucket": "easy" if r[j] < 1 / 3 else "hard" if r[j] > 2 / 3 else "medium",
                              "label": None, "part": "heldout",
                              "realised": {m: {"nll_after": 2 + r[j], "delta_nll": 1.0, "forgotten_at": 5}
                                           for m in methods},
                              "predictors": {"mrd": 0.1, "gradient_norm": 3.0, "circuit_depth": 0.5}}
                          for j, i in enumerate(ids)})
    ws.set_status(cal, "done")
    return ids


def timed_run(at):
    t = time.perf_counter()
    at.run()
    assert not at.exception, at.exception
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--part", choices=["all", "pages", "newcomer"], default="all")
    newcomer.add_arguments(p)
    args = p.parse_args()
    figures = {"bench": "app"}
    if args.part in ("all", "pages"):
        figures.update(pages(args.samples))
    if args.part in ("all", "newcomer"):
        figures["newcomer"] = newcomer.measure(args)
    print(json.dumps(figures))


def pages(n_samples: int) -> dict:
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        t = time.perf_counter()
        ids = synthetic_workspace(root, n_samples)
        figures = {"samples": n_samples, "build_workspace_s": round(time.perf_counter() - t, 2)}
        probe = (f"import time; t=time.perf_counter(); from streamlit.testing.v1 import AppTest; "
                 f"at=AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=300); "
                 f"at.query_params['workspace']={str(root)!r}; at.run(); assert not at.exception; "
                 f"print(time.perf_counter()-t)")
        load_model = subprocess.run([sys.executable, "-c", "from cud_core.engine.models import load_model; "
                                     "load_model('embedded')"], cwd=ROOT, capture_output=True)  # warm the cache
        assert load_model.returncode == 0, load_model.stderr[-500:]
        out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
        figures["home_first_s"] = round(float(out.stdout.strip().splitlines()[-1]), 2)

        def page(name, **params):
            at = AppTest.from_file(str(ROOT / "views" / name), default_timeout=300)
            at.query_params["workspace"] = str(root)
            for k, v in params.items():
                at.query_params[k] = v
            return at
        at = page("1_Rankings.py")
        figures["rankings_s"] = round(timed_run(at), 3)
        assert len(at.dataframe[0].value) == n_samples
        at.multiselect[0].set_value(["hard"])
        figures["rankings_filter_s"] = round(timed_run(at), 3)
        at = page("2_Circuit.py", sample=ids[0])
        figures["circuit_s"] = round(timed_run(at), 3)
        at.selectbox[0].set_value(ids[1])
        figures["circuit_select_s"] = round(timed_run(at), 3)
        figures["circuit_edges"] = int(at.dataframe[0].value["value"]["n_edges"])
    return figures


if __name__ == "__main__":
    main()
