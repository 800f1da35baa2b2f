"""Top-k accuracy against labels, and label-free agreement between two models' outputs."""

from __future__ import annotations

import numpy as np


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` best logits."""
    return float((top_k(logits, k) == labels[:, None]).any(axis=1).mean())


def accuracy_summary(logits: np.ndarray, labels: np.ndarray | None) -> dict[str, float | None]:
    """Top-1 and top-5 in percent, ``None`` without labels."""
    if labels is None:
        return {"top1": None, "top5": None}
    return {"top1": 100 * top_k_accuracy(logits, labels, 1), "top5": 100 * top_k_accuracy(logits, labels, 5)}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(ref || cand) of the softmax of two logit matrices."""
    log_p, log_q = log_softmax(reference.astype(np.float64)), log_softmax(candidate.astype(np.float64))
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Label-free drift: top-1 agreement (%), mean top-5 overlap (%) and mean KL(ref || cand) of softmax."""
    top1 = float((reference.argmax(1) == candidate.argmax(1)).mean()) * 100
    ref5, cand5 = top_k(reference, 5), top_k(candidate, 5)
    overlap = (ref5[:, :, None] == cand5[:, None, :]).any(axis=2).mean() * 100
    return {"top1_agreement": top1, "top5_overlap": float(overlap), "mean_kl": mean_kl(reference, candidate)}


def format_points(points: float) -> str:
    """Signed percentage points, ``+0.50`` / ``-0.10``, and ``0.00`` rather than a negative zero."""
    text = f"{points:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text
