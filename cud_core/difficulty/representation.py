"""The representation baseline: CUD's anchor recipe applied to hidden states instead of circuits.

Fixed before any outcome was looked at: a sample's features are, per layer, the residual stream
averaged over its answer tokens (`predictors.hidden_state_means`); each layer is centred on the forget
set's mean and divided by the root-mean-square norm of its centred vectors, so every layer weighs the
same, and the layers are concatenated. This uses no outcome (features exist for every sample before
unlearning). Then exactly CUD's recipe, out-of-fold on the validation's folds: the fold's training
labels (`crossfit.fold_labels`) → mean easy and mean hard feature vectors → the position between them,
d_E / (d_E + d_H) with d = 1 − cosine (`cud.cud_scores`). If this does as well as CUD, a circuit adds
nothing a cheaper internal signal does not already carry.
"""
from __future__ import annotations

import numpy as np
import torch

from cud_core.difficulty.cud import cud_scores


def standardise(features: torch.Tensor) -> torch.Tensor:
    """[n, layers, d] → [n, layers·d]: each layer centred on the samples' mean and scaled to unit
    root-mean-square norm (a layer that does not vary is left at 0)."""
    x = features.double() - features.double().mean(0, keepdim=True)
    rms = x.pow(2).sum(-1).mean(0).sqrt()                                   # [layers]
    x = x / torch.where(rms > 0, rms, torch.ones_like(rms))[None, :, None]
    return x.reshape(len(x), -1)


def anchor_scores(matrix: torch.Tensor, rows: list[int], labels: dict[str, str], ids: list[str]) -> np.ndarray:
    """Scores of `matrix[rows]` between the mean easy and mean hard rows among `labels` (ids → label)."""
    index = {i: j for j, i in enumerate(ids)}
    easy = [index[i] for i, lab in labels.items() if lab == "easy" and i in index]
    hard = [index[i] for i, lab in labels.items() if lab == "hard" and i in index]
    if not easy or not hard:
        raise ValueError(f"the representation anchors need an easy and a hard sample (got {len(easy)} easy, "
                         f"{len(hard)} hard)")
    return cud_scores(matrix[rows], matrix[easy].mean(0), matrix[hard].mean(0)).numpy()


def cross_fit(ids: list[str], features: dict[str, torch.Tensor], folds: dict[str, int],
              labels_per_fold: list[dict[str, str]]) -> dict[str, float]:
    """Out-of-fold representation score of every sample: fold f's samples against anchors from
    `labels_per_fold[f]` (labels computed without fold f's outcomes)."""
    matrix = standardise(torch.stack([features[i].float() for i in ids]))
    out = {}
    for f, labels in enumerate(labels_per_fold):
        rows = [j for j, i in enumerate(ids) if folds[i] == f]
        out.update({ids[j]: float(v) for j, v in zip(rows, anchor_scores(matrix, rows, labels, ids))})
    return out
