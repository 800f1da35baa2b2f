"""A task plug-in written outside calibkit: single-instance keypoint heatmaps (pose, face landmarks).

Import this module (or list ``Keypoints`` under the ``calibkit.tasks`` entry-point group of your package)
and ``--task keypoints`` compares an INT8 or FP16 candidate with FP32 where each of the model's K heatmaps
``[N, K, H, W]`` puts its keypoint at its peak: PCK (the share of FP32's visible keypoints the candidate
places within ``pck`` of the heatmap's diagonal), the mean distance in input pixels, and how often the
two agree on which keypoints are visible (peak at least ``threshold``). Nothing in calibkit was edited to
add it; ``tests/tasks/test_keypoints_plugin.py`` runs calibkit's task contract on it and a real comparison.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.errors import CalibkitError
from calibkit.tasks import register_task
from calibkit.tasks.base import Metric, Option, Scorer, Task, TaskContext


def peaks(heatmaps: np.ndarray) -> np.ndarray:
    """``[N, K, 3]``: each heatmap's peak as (x, y, value), in heatmap cells."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    index = flat.argmax(axis=2)
    value = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
    return np.stack([index % w, index // w, value], axis=2).astype(np.float64)


class KeypointScorer(Scorer):
    """Counts over keypoints: FP32-visible ones, those the candidate puts within reach, their distances
    (input pixels) and the visibility calls both make alike; merged by adding."""

    COUNTS = ("visible", "within", "distance", "agreeing", "total")

    def __init__(self, threshold: float, reach: float, cell: float) -> None:
        self.threshold, self.reach, self.cell = threshold, reach, cell
        self.visible = self.within = self.agreeing = self.total = 0
        self.distance = 0.0

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], batch: Batch) -> None:
        for ref, cand in zip(reference, candidate):
            shown = ref[:, 2] >= self.threshold
            distance = np.hypot(*(ref[:, :2] - cand[:, :2]).T)
            self.visible += int(shown.sum())
            self.within += int((distance[shown] <= self.reach).sum())
            self.distance += float(distance[shown].sum()) * self.cell
            self.agreeing += int((shown == (cand[:, 2] >= self.threshold)).sum())
            self.total += len(ref)

    def merge(self, other: "KeypointScorer") -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def result(self) -> dict[str, float | None]:
        return {"pck": 100 * self.within / self.visible if self.visible else None,
                "mean_error_px": self.distance / self.visible if self.visible else None,
                "visibility_agreement": 100 * self.agreeing / max(self.total, 1)}


@register_task
class Keypoints(Task):
    name = "keypoints"
    description = "keypoint heatmaps [N, K, H, W], one instance per image: each keypoint at its heatmap's peak"
    metrics = (
        Metric("pck", "PCK vs FP32 %", True),
        Metric("mean_error_px", "mean keypoint error (input px)", False),
        Metric("visibility_agreement", "visibility agreement %", True),
    )
    unusable_if = ("pck<50",)
    degraded_if = ("pck<90",)
    options = {
        "output": Option(str, "", "name of the heatmap output (default: the first 4-D output)"),
        "threshold": Option(float, 0.1, "peak value from which a keypoint counts as visible"),
        "pck": Option(float, 0.05, "reach of a correct keypoint, as a share of the heatmap's diagonal"),
    }

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        chosen = self.select_output(4, "[N, K, H, W]")
        self.output = chosen.name
        height, width = chosen.shape[2] or context.input_size[0], chosen.shape[3] or context.input_size[1]
        self.reach = self.settings["pck"] * float(np.hypot(height, width))
        self.cell = context.input_size[1] / width  # input pixels per heatmap cell

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return list(peaks(np.asarray(outputs[self.output], dtype=np.float32)))

    def scorer(self) -> KeypointScorer:
        return KeypointScorer(self.settings["threshold"], self.reach, self.cell)

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        if result["pck"] is None:
            raise CalibkitError(f"no FP32 keypoint peaks at {self.settings['threshold']} or more, so PCK does not "
                                "apply; lower --task-opt threshold")
        return 100 - float(result["pck"]), "pck"
