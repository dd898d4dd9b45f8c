"""Faithfulness against circuit size on the embedded model: one JSON line.

For N world-facts samples the model knows: EAP-IG-inputs scores, greedy circuits of 10…10,000 edges,
faithfulness under zero and mean ablation (mean over the samples), and the first n reaching 0.5 / 0.8.
    .venv/bin/python bench/faithfulness.py [--samples 8]
"""
import argparse
import json
import time

from cud_core.data.samples import load_builtin
from cud_core.engine.attribution import attribute
from cud_core.engine.circuits import faithfulness_curve
from cud_core.engine.graph import Graph
from cud_core.engine.models import load_model
from cud_core.pipeline.knowledge import known_facts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    lm = load_model("embedded", device="cpu")
    samples = known_facts(lm.model, lm.tokenizer, load_builtin("world-facts"))[: args.samples]
    graph = Graph.from_model(lm.model)
    t = time.time()
    scores = list(attribute(lm.model, lm.tokenizer, samples, graph=graph))
    curve = faithfulness_curve(lm.model, lm.tokenizer, samples, scores, graph)
    print(json.dumps({"bench": "faithfulness", "model": lm.name, "n_samples": len(samples), "method": "eap-ig-inputs",
                      **curve, "seconds": round(time.time() - t, 1)}))


if __name__ == "__main__":
    main()
