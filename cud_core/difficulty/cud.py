"""Realised difficulty, easy/hard labels, anchor circuits and the CUD score.

CUD(q) = d_E / (d_E + d_H), d_X = max(0, 1 − sim(q, X)), with E/H the easy/hard anchor circuits:
0 = the sample's circuit looks like the easy anchor, 1 = like the hard anchor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from cud_core.engine.circuits import as_vector, binarise, from_vector
from cud_core.engine.graph import Graph

SIMILARITIES = ("cosine", "jaccard", "hamming")
BUCKETS = ("easy", "medium", "hard")


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def similarity(a, b, kind: str = "cosine") -> float:
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"circuit vectors differ in length ({len(a)} vs {len(b)})")
    if kind == "cosine":
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
    if kind == "jaccard":  # weighted Jaccard; the usual |A∩B|/|A∪B| for 0/1 vectors
        a, b = np.abs(a), np.abs(b)
        union = np.maximum(a, b).sum()
        return float(np.minimum(a, b).sum() / union) if union > 0 else 1.0
    if kind == "hamming":
        return 1.0 - float(np.mean((a != 0) != (b != 0)))
    raise ValueError(f"unknown similarity {kind!r}; choose one of {', '.join(SIMILARITIES)}")


def cud_score(q, easy, hard, similarity: str = "cosine") -> float:
    """CUD in [0, 1] of circuit vector q between the easy and hard anchors (0.5 when equidistant)."""
    d_e = max(0.0, 1.0 - globals()["similarity"](q, easy, similarity))
    d_h = max(0.0, 1.0 - globals()["similarity"](q, hard, similarity))
    if d_e + d_h < 1e-12:
        return 0.5
    return min(1.0, max(0.0, d_e / (d_e + d_h)))


def cud_scores(matrix: torch.Tensor, easy, hard, similarity: str = "cosine") -> torch.Tensor:
    """`cud_score` of every row of `matrix` (n × edges) at once, in float64; equal to the loop."""
    m = matrix.double()
    sims = []
    for anchor in (easy, hard):
        a = torch.as_tensor(anchor).double().flatten()
        if a.shape[0] != m.shape[1]:
            raise ValueError(f"circuit vectors differ in length ({m.shape[1]} vs {a.shape[0]})")
        if similarity == "cosine":
            den = m.norm(dim=1) * a.norm()
            sims.append(torch.where(den > 0, (m @ a) / den.clamp(min=1e-300), torch.zeros_like(den)))
        elif similarity == "jaccard":
            ma, aa = m.abs(), a.abs()
            union = torch.maximum(ma, aa).sum(1)
            sims.append(torch.where(union > 0, torch.minimum(ma, aa).sum(1) / union.clamp(min=1e-300),
                                    torch.ones_like(union)))
        elif similarity == "hamming":
            sims.append(1.0 - ((m != 0) != (a != 0)).double().mean(1))
        else:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    d_e, d_h = (1.0 - sims[0]).clamp(min=0), (1.0 - sims[1]).clamp(min=0)
    total = d_e + d_h
    return torch.where(total < 1e-12, torch.full_like(total, 0.5), (d_e / total.clamp(min=1e-300)).clamp(0, 1))


def bucket(cud: float, low: float = 1 / 3, high: float = 2 / 3) -> str:
    return "easy" if cud < low else "hard" if cud > high else "medium"


def tercile_buckets(values: dict[str, float]) -> dict[str, str]:
    """easy/medium/hard by the terciles of the given CUD values (balanced buckets for browsing)."""
    if not values:
        return {}
    low, high = np.quantile(list(values.values()), [1 / 3, 2 / 3])
    return {k: "easy" if v <= low else "hard" if v > high else "medium" for k, v in values.items()}


# ----------------------------------------------------------------------------- realised difficulty

def realised_difficulty(curve: list[dict], prob_curve: list[dict], steps: list[int],
                        threshold: float = 0.1) -> dict[str, dict]:
    """Per sample: NLL after unlearning (higher = easier), its change, and the first evaluated step
    at which the answer probability fell below `threshold` (the last step + 1 if it never did)."""
    out = {}
    never = steps[-1] + 1
    for sid in curve[0]:
        below = next((s for s, p in zip(steps, prob_curve) if p[sid] < threshold), never)
        out[sid] = {"nll_after": curve[-1][sid], "delta_nll": curve[-1][sid] - curve[0][sid],
                    "forgotten_at": below}
    return out


def label_easy_hard(nll_after: dict[str, dict[str, float]], q: float = 0.125) -> dict[str, str]:
    """Easy/hard labels by agreement of K methods.

    `nll_after` maps method → {sample_id: NLL after unlearning}. For each method the top-q samples
    (highest NLL) vote easy and the bottom-q vote hard; a label needs ≥ ceil(K/2) votes; samples
    voted both ways are dropped."""
    if not nll_after:
        raise ValueError("labels need at least one unlearning method's results")
    k = len(nll_after)
    need = math.ceil(k / 2)
    easy_votes, hard_votes = {}, {}
    for values in nll_after.values():
        ranked = sorted(values, key=values.get)
        n = max(1, round(q * len(ranked)))
        for sid in ranked[-n:]:
            easy_votes[sid] = easy_votes.get(sid, 0) + 1
        for sid in ranked[:n]:
            hard_votes[sid] = hard_votes.get(sid, 0) + 1
    labels = {}
    for sid in set(easy_votes) | set(hard_votes):
        is_easy, is_hard = easy_votes.get(sid, 0) >= need, hard_votes.get(sid, 0) >= need
        if is_easy != is_hard:
            labels[sid] = "easy" if is_easy else "hard"
    return labels


# ----------------------------------------------------------------------------- anchors

@dataclass
class Anchors:
    easy: torch.Tensor        # 0/1 circuit vector over real edges
    hard: torch.Tensor
    easy_scores: torch.Tensor  # mean edge scores behind them
    hard_scores: torch.Tensor
    easy_ids: list[str]
    hard_ids: list[str]
    binarise: str = "greedy"
    n_edges: int = 75

    def score(self, circuit_vector, similarity: str = "cosine") -> float:
        return cud_score(circuit_vector.float(), self.easy.float(), self.hard.float(), similarity)

    def score_many(self, matrix: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
        """CUD of every row of an (n × edges) matrix of circuit vectors."""
        return cud_scores(matrix, self.easy, self.hard, similarity)

    def save(self, workspace, run_id: str, name: str = "anchors") -> None:
        meta = {"easy_ids": json.dumps(self.easy_ids), "hard_ids": json.dumps(self.hard_ids),
                "binarise": self.binarise, "n_edges": str(self.n_edges)}
        workspace.save_tensors(run_id, name, {"easy": self.easy.to(torch.uint8), "hard": self.hard.to(torch.uint8),
                                                   "easy_scores": self.easy_scores, "hard_scores": self.hard_scores},
                               meta)

    @classmethod
    def load(cls, workspace, run_id: str, name: str = "anchors") -> "Anchors":
        from safetensors import safe_open

        path = workspace.tensor_path(run_id, name)
        if not path.is_file():
            if name == "anchors" and any(path.parent.glob("anchors-*.safetensors")):
                raise FileNotFoundError(f"calibration {run_id} has no consensus anchors (its labels lack an easy or "
                                        "a hard sample on which enough methods agree); its CUD uses each method's own "
                                        "anchors (anchors-METHOD)")
            raise FileNotFoundError(f"run {run_id} has no anchors ({path}); run `calibrate` first")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = workspace.load_tensors(run_id, name)
        return cls(t["easy"].bool(), t["hard"].bool(), t["easy_scores"], t["hard_scores"],
                   json.loads(meta["easy_ids"]), json.loads(meta["hard_ids"]), meta["binarise"], int(meta["n_edges"]))


def build_anchors(edge_scores: dict[str, torch.Tensor], labels: dict[str, str], graph: Graph,
                  method: str = "greedy", n: int = 75) -> Anchors:
    """Anchor circuits: mean edge-score vectors over the easy (hard) samples, binarised like a sample's."""
    easy_ids = sorted(s for s, lab in labels.items() if lab == "easy" and s in edge_scores)
    hard_ids = sorted(s for s, lab in labels.items() if lab == "hard" and s in edge_scores)
    if not easy_ids or not hard_ids:
        raise ValueError(f"anchors need at least one easy and one hard sample with edge scores "
                         f"(got {len(easy_ids)} easy, {len(hard_ids)} hard)")
    mean = lambda ids: torch.stack([edge_scores[s].float() for s in ids]).mean(0)  # noqa: E731
    e_scores, h_scores = mean(easy_ids), mean(hard_ids)
    e = as_vector(binarise(from_vector(e_scores, graph), graph, method, n), graph)
    h = as_vector(binarise(from_vector(h_scores, graph), graph, method, n), graph)
    return Anchors(e, h, e_scores, h_scores, easy_ids, hard_ids, method, n)
