"""Axis-aligned boxes (x1, y1, x2, y2): pairwise IoU and class-aware non-maximum suppression, vectorised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections in model-input pixels: ``boxes`` [K, 4] xyxy, ``scores`` [K], ``classes`` [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score: float) -> "Detections":
        keep = self.scores >= score
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4]: [N, M]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.5,
        max_detections: int = 100) -> np.ndarray:
    """Indices kept by greedy NMS within each class, best score first.

    Boxes of different classes are moved apart by a per-class offset so one pass suppresses within
    classes only; each kept box suppresses all its overlaps at once.
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    offset = (float(np.abs(boxes).max()) + 1) * classes[order].astype(np.float64)
    shifted = np.asarray(boxes, np.float64)[order] + offset[:, None]
    alive = np.ones(len(order), bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == max_detections:
            break
        rest = np.nonzero(alive[i + 1 :])[0] + i + 1
        if len(rest):
            alive[rest[box_iou(shifted[i : i + 1], shifted[rest])[0] > iou]] = False
    return order[np.array(kept, np.int64)]


def select(boxes: np.ndarray, class_scores: np.ndarray, min_score: float, iou: float, pre_nms: int = 1000,
           max_detections: int = 100) -> Detections:
    """Detections from dense per-anchor ``class_scores`` [A, C]: every (anchor, class) above ``min_score``,
    the best ``pre_nms`` of them, then class-aware NMS."""
    anchors, classes = np.nonzero(class_scores > min_score)
    scores = class_scores[anchors, classes]
    if len(scores) > pre_nms:
        top = np.argpartition(-scores, pre_nms - 1)[:pre_nms]
        anchors, classes, scores = anchors[top], classes[top], scores[top]
    keep = nms(boxes[anchors], scores, classes, iou, max_detections)
    return Detections(np.asarray(boxes[anchors[keep]], np.float32), scores[keep].astype(np.float32),
                      classes[keep].astype(np.int64))


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    centre, half = boxes[..., :2], boxes[..., 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=-1)
