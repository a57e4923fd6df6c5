"""Anomaly detection with exact likelihoods: log p(x) as a score, and the ROC AUC of that score."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["roc_auc"]


def roc_auc(scores_in, scores_out) -> float:
    """Area under the ROC curve of a score that should be higher for typical rows than for outliers.

    The probability that a random in-distribution row scores higher than a random outlier, ties
    counting one half (the Mann-Whitney U statistic over n_in * n_out), computed from ranks in
    O(n log n). Pass log-likelihoods ``model.log_prob(x)`` as scores: 1.0 separates perfectly,
    0.5 is chance.

    Parameters
    ----------
    scores_in, scores_out : 1-D Tensor or array
        Scores of in-distribution rows and of outliers. ``-inf`` is allowed, NaN is not.

    Examples
    --------
    >>> roc_auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))
    0.875
    """
    a, b = _as_scores(scores_in, "scores_in"), _as_scores(scores_out, "scores_out")
    _, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank, averaged over ties
    rank_sum_in = mean_rank[inverse[: len(a)]].sum()
    u = rank_sum_in - len(a) * (len(a) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def _as_scores(scores, name: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN (at index {int(np.flatnonzero(np.isnan(scores))[0])})")
    return scores
