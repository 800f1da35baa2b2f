"""Classification: top-1/top-5 against labels (when they fit the model's classes) and agreement with FP32."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.errors import CalibkitError
from calibkit.tasks.base import Metric, Option, OutputInfo, Scorer, Task, TaskContext
from calibkit.tasks.logits import mean_kl, top_k
from calibkit.tasks.registry import register_task


class ClassificationScorer(Scorer):
    """Running counts: label hits of the candidate and the reference, agreements and KL."""

    def __init__(self, use_labels: bool, classes: int | None) -> None:
        self.use_labels = use_labels
        # top-5 says nothing with five classes or fewer: it always holds
        self.top5_applies = classes is None or classes > 5
        self.images = 0
        self.hits = {"top1": 0, "top5": 0, "ref_top1": 0, "ref_top5": 0}
        self.agree = 0
        self.overlap = 0.0
        self.kl_sum = 0.0

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], batch: Batch) -> None:
        ref, cand = np.stack(reference), np.stack(candidate)
        self.images += len(ref)
        ref5, cand5 = top_k(ref, 5), top_k(cand, 5)
        self.agree += int((ref5[:, 0] == cand5[:, 0]).sum())
        self.overlap += float((ref5[:, :, None] == cand5[:, None, :]).any(axis=2).mean(axis=1).sum())
        self.kl_sum += mean_kl(ref, cand) * len(ref)
        labels = batch.labels
        if self.use_labels and labels is not None:
            for prefix, top in (("", cand5), ("ref_", ref5)):
                self.hits[f"{prefix}top1"] += int((top[:, 0] == labels).sum())
                self.hits[f"{prefix}top5"] += int((top == labels[:, None]).any(axis=1).sum())

    def merge(self, other: "ClassificationScorer") -> None:
        self.images += other.images
        self.hits = {key: count + other.hits[key] for key, count in self.hits.items()}
        self.agree += other.agree
        self.overlap += other.overlap
        self.kl_sum += other.kl_sum

    def result(self) -> dict[str, float | None]:
        n = max(self.images, 1)
        out: dict[str, float | None] = {
            "agreement": 100 * self.agree / n, "top5_overlap": 100 * self.overlap / n, "kl": self.kl_sum / n,
            "top1": None, "top5": None, "top1_drop": None, "top5_drop": None,
        }
        if self.use_labels:
            for key in ("top1", "top5"):
                out[key] = 100 * self.hits[key] / n
                out[f"{key}_drop"] = 100 * (self.hits[f"ref_{key}"] - self.hits[key]) / n
        if not self.top5_applies:
            out.update(top5=None, top5_drop=None, top5_overlap=None)
        return out


@register_task
class Classification(Task):
    name = "classification"
    description = "one logits/probabilities vector per image"
    metrics = (
        Metric("top1", "top-1 %", True, versus_fp32=False, labels=True),
        Metric("top1_drop", "top-1 drop (points)", False, labels=True),
        Metric("top5", "top-5 %", True, versus_fp32=False, labels=True),
        Metric("top5_drop", "top-5 drop (points)", False, labels=True),
        Metric("agreement", "top-1 agreement with FP32 %", True),
        Metric("top5_overlap", "top-5 overlap %", True),
        Metric("kl", "mean KL", False, "{:.4f}"),
    )
    unusable_if = ("agreement<80",)
    exporter_tasks = ("classify",)
    budget_metrics = ("auto", "top1", "agreement")
    options = {"output": Option(str, "", "name of the logits output (default: the first 2-D output)")}

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        chosen = self.select_output(2, "[N, classes]")
        self.output, self.classes = chosen.name, chosen.shape[-1]
        self.use_labels = context.num_labels is not None

    def label_classes(self) -> int | None:
        return self.classes

    @classmethod
    def detect(cls, outputs: Sequence[OutputInfo], input_size: tuple[int, int]) -> bool:
        return len(outputs) == 1 and len(outputs[0].shape) == 2

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = np.asarray(outputs[self.output], np.float32)
        return list(logits.reshape(len(logits), -1))

    def scorer(self) -> ClassificationScorer:
        return ClassificationScorer(self.use_labels, self.classes)

    def check_budget_metric(self, metric: str) -> None:
        super().check_budget_metric(metric)
        if metric == "top1" and not self.use_labels:
            raise CalibkitError("--budget-metric top1 needs labelled images; use agreement")

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        if metric == "top1" or (metric == "auto" and result.get("top1_drop") is not None):
            return float(result["top1_drop"]), "top1"
        return 100 - float(result["agreement"]), "agreement"

    def drift_sums(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> np.ndarray:
        """Summed KL of the softmax against the reference's, and the image count."""
        n = len(reference[self.output])
        kl = mean_kl(reference[self.output].reshape(n, -1), candidate[self.output].reshape(n, -1))
        return np.array([kl * n, n])

    def drift_of(self, sums: np.ndarray) -> float:
        """Mean KL over the images."""
        return float(sums[0] / sums[1])
