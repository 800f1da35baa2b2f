"""Which layers cost the accuracy, and the fewest to keep in float to meet an accuracy budget.

Sensitivity is leave-one-out: the model is quantized with every quantizable node but one, and the
node's score is how much that lowers the output drift (mean KL of softmax against FP32) on a subset
of images. The budget search then keeps the most sensitive nodes in float, one more at a time, until
the top-1 drop (with labels) or the top-1 agreement loss (without) is within the budget on all images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from calibkit.artifacts.qdq import export_qdq
from calibkit.backends.onnxruntime import OrtSession
from calibkit.calib.registry import TensorRange
from calibkit.compare.accuracy import agreement, top_k_accuracy
from calibkit.errors import CalibkitError
from calibkit.onnx_model import load_model
from calibkit.progress import progress

SENSITIVE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class ImageCache:
    """Preprocessed images held in memory so the many re-quantized models see identical inputs fast."""

    arrays: np.ndarray
    labels: np.ndarray | None
    batch_size: int = 16

    def logits(self, model: Path) -> np.ndarray:
        session = OrtSession(model, ["CPUExecutionProvider"])
        outs = [next(iter(session.run(self.arrays[i : i + self.batch_size]).values()))
                for i in range(0, len(self.arrays), self.batch_size)]
        return np.concatenate(outs).reshape(len(self.arrays), -1).astype(np.float32)


def loss(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> float:
    """Top-1 points lost against labels, or top-1 agreement points lost against FP32 without labels."""
    if labels is not None:
        return 100 * (top_k_accuracy(reference, labels, 1) - top_k_accuracy(candidate, labels, 1))
    return 100 - agreement(reference, candidate)["top1_agreement"]


def quantizable_nodes(model_path: Path, ops: Sequence[str] = SENSITIVE_OPS) -> list[str]:
    """Names of the nodes sensitivity ranks, in graph order."""
    return [node.name for node in load_model(model_path).graph.node if node.op_type in ops and node.name]


def layer_sensitivity(model: Path, ranges: Mapping[str, TensorRange], cache: ImageCache,
                      nodes: Sequence[str] | None = None) -> list[dict]:
    """Leave-one-out ranking, most sensitive first: ``{node, kl, kl_gain, agreement}`` per node."""
    nodes = list(nodes) if nodes is not None else quantizable_nodes(model)
    reference = cache.logits(model)
    with tempfile.TemporaryDirectory(prefix="calibkit-sens-") as tmp:
        path = Path(tmp) / "q.onnx"
        base = agreement(reference, cache.logits(export_qdq(model, ranges, path, target="onnxruntime")))
        rows = []
        with progress(len(nodes), "layer sensitivity", unit="layer") as bar:
            for node in nodes:
                drift = agreement(reference, cache.logits(export_qdq(model, ranges, path, [node], "onnxruntime")))
                rows.append({"node": node, "kl": drift["mean_kl"], "kl_gain": base["mean_kl"] - drift["mean_kl"],
                             "top1_agreement": drift["top1_agreement"]})
                bar.update(1)
    return sorted(rows, key=lambda r: r["kl_gain"], reverse=True)


@dataclass
class BudgetResult:
    """Outcome of the budget search: nodes kept in float, loss per step, the written models."""

    budget: float
    kept_float: list[str]
    metric: str = "top1"
    steps: list[dict] = field(default_factory=list)
    met: bool = False
    models: dict[str, str] = field(default_factory=dict)


def fit_accuracy_budget(model: Path, ranges: Mapping[str, TensorRange], cache: ImageCache, ranking: Sequence[str],
                        budget: float, out_prefix: Path, max_float: int = 16, metric: str = "auto") -> BudgetResult:
    """Keep the first k of ``ranking`` in float for k = 0, 1, ... until the loss is within ``budget``.

    ``metric``: ``top1`` (points lost against labels), ``agreement`` (top-1 agreement points lost
    against FP32) or ``auto`` (top1 when the cache has labels). Writes ``<out_prefix>.qdq.onnx``
    (TensorRT) and ``<out_prefix>.ort.onnx`` for the chosen k.
    """
    if metric not in ("auto", "top1", "agreement"):
        raise CalibkitError(f"unknown budget metric {metric!r}; use auto, top1 or agreement")
    if metric == "top1" and cache.labels is None:
        raise CalibkitError("--budget-metric top1 needs labelled images; use agreement")
    labels = None if metric == "agreement" else cache.labels
    reference = cache.logits(model)
    result = BudgetResult(budget, [], metric="agreement" if labels is None else "top1")
    with tempfile.TemporaryDirectory(prefix="calibkit-budget-") as tmp:
        path = Path(tmp) / "q.onnx"
        for k in range(0, min(max_float, len(ranking)) + 1):
            excluded = list(ranking[:k])
            logits = cache.logits(export_qdq(model, ranges, path, excluded, "onnxruntime"))
            lost = loss(reference, logits, labels)
            step = {"float_layers": k, "loss": lost}
            if cache.labels is not None:
                step["top1"] = 100 * top_k_accuracy(logits, cache.labels, 1)
            result.steps.append(step)
            if lost <= budget:
                result.kept_float, result.met = excluded, True
                break
        else:
            result.kept_float = list(ranking[: min(max_float, len(ranking))])
    for target, suffix in (("tensorrt", ".qdq.onnx"), ("onnxruntime", ".ort.onnx")):
        written = export_qdq(model, ranges, Path(f"{out_prefix}{suffix}"), result.kept_float, target)
        result.models[target] = str(written)
    return result

