"""Dense prediction (segmentation, probability maps): per-pixel classes — the argmax over channels, or a
threshold on a one-channel map — compared with FP32's as mean IoU and pixel agreement."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.errors import CalibkitError
from calibkit.tasks.base import Metric, Option, OutputInfo, Scorer, Task, TaskContext
from calibkit.tasks.registry import register_task


def label_map(values: np.ndarray, channel_axis: int, threshold: float) -> np.ndarray:
    """[N, H, W] integer classes from [N, C, H, W] (or channels last): argmax, or ``> threshold`` for C = 1."""
    if values.shape[channel_axis] == 1:
        return (np.squeeze(values, axis=channel_axis) > threshold).astype(np.int64)
    return values.argmax(axis=channel_axis)


class DenseScorer(Scorer):
    """A confusion matrix of FP32's class (rows) against the candidate's (columns), over all pixels.
    ``foreground`` is the candidate's own share of non-background pixels (FP32's on the reference row)."""

    def __init__(self, classes: int) -> None:
        self.confusion = np.zeros((classes, classes), np.int64)

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], batch: Batch) -> None:
        classes = len(self.confusion)
        for ref, cand in zip(reference, candidate):
            flat = ref.ravel() * classes + cand.ravel()
            self.confusion += np.bincount(flat, minlength=classes * classes).reshape(classes, classes)

    def merge(self, other: "DenseScorer") -> None:
        self.confusion += other.confusion

    def result(self) -> dict[str, float | None]:
        total = self.confusion.sum()
        agree = np.trace(self.confusion)
        inter = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if present.any() else 1.0
        foreground = float(inter[1:].sum() / union[1:].sum()) if union[1:].sum() else 1.0
        return {"miou": miou, "foreground_iou": foreground, "pixel_agreement": 100 * agree / max(total, 1),
                "foreground": 100 * float(self.confusion[:, 1:].sum() / max(total, 1))}


@register_task
class Dense(Task):
    name = "dense"
    description = "segmentation or probability maps: [N, C, H, W] or [N, H, W, C]"
    metrics = (
        Metric("miou", "mean IoU vs FP32", True, "{:.3f}"),
        Metric("foreground_iou", "foreground IoU vs FP32", True, "{:.3f}"),
        Metric("pixel_agreement", "pixel agreement %", True),
        Metric("foreground", "foreground pixels %", True, versus_fp32=False),
    )
    # mIoU alone hides a lost foreground behind the background class on sparse maps (text, lanes)
    unusable_if = ("miou<0.5", "foreground_iou<0.5")
    options = {
        "threshold": Option(float, 0.5, "threshold of a one-channel probability map"),
        "output": Option(str, "", "name of the map output (default: the first 4-D output)"),
        "channels_last": Option(int, 0, "1 when the map is [N, H, W, C]"),
    }

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        chosen = self.select_output(4, "[N, C, H, W]")
        self.output = chosen.name
        self.channel_axis = 3 if self.settings["channels_last"] else 1
        channels = chosen.shape[self.channel_axis]
        if channels is None:
            raise CalibkitError(f"output {chosen.name!r} has a dynamic channel count; dense needs a fixed one")
        self.classes = 2 if channels == 1 else channels

    @classmethod
    def detect(cls, outputs: Sequence[OutputInfo], input_size: tuple[int, int]) -> bool:
        """One 4-D output whose channel axis is fixed and small: a map at some stride of the input."""
        return len(outputs) == 1 and len(outputs[0].shape) == 4 and outputs[0].shape[1] is not None \
            and outputs[0].shape[1] <= 256

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return list(label_map(np.asarray(outputs[self.output]), self.channel_axis, self.settings["threshold"]))

    def scorer(self) -> DenseScorer:
        return DenseScorer(self.classes)

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        return 100 * (1 - float(result["miou"])), "miou"
