"""Ranking and divergence of logits: the top-k classes of each row, and the mean KL between two models."""

from __future__ import annotations

import numpy as np


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(ref || cand) of the softmax of two logit matrices."""
    log_p, log_q = log_softmax(reference.astype(np.float64)), log_softmax(candidate.astype(np.float64))
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))

