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


# Smallest probability a log is taken of: a class a quantized Softmax rounds to 0 costs at most log(1e12).
TINY = 1e-12


def is_distribution(values: np.ndarray, tolerance: float = 1e-3) -> bool:
    """True when every row is already a probability distribution (the model ends in a Softmax)."""
    return bool(values.size) and values.min() >= 0 and np.allclose(values.sum(axis=1), 1.0, atol=tolerance)


def log_probabilities(values: np.ndarray, distribution: bool) -> np.ndarray:
    """Row-wise log probabilities: of the values themselves where they are a distribution (renormalised,
    since a quantized Softmax sums to 1 only roughly), else of their softmax."""
    if not distribution:
        return log_softmax(values)
    clipped = np.clip(values, 0, None)
    return np.log(np.clip(clipped / np.maximum(clipped.sum(axis=1, keepdims=True), TINY), TINY, None))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(ref || cand) of two models' class scores: logits through a softmax, but outputs that
    already are probabilities as they are (a softmax of probabilities flattens every drift to about 0)."""
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    distribution = is_distribution(reference)
    log_p, log_q = log_probabilities(reference, distribution), log_probabilities(candidate, distribution)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))

