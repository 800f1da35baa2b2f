"""Detection metrics: greedy matching for precision/recall/F1, and COCO AP through pycocotools.

Against FP32, the reference's confident detections are the pseudo ground truth; against a COCO
annotations file, the annotations are. AP is never computed here by hand: pycocotools' COCOeval does it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from calibkit.tasks.boxes import Detections, box_iou


@dataclass
class MatchCounts:
    """True positives, candidate and reference counts, overall and per class."""

    tp: int = 0
    candidates: int = 0
    references: int = 0
    per_class: dict[int, list[int]] = field(default_factory=dict)

    def add(self, other: "MatchCounts") -> None:
        self.tp += other.tp
        self.candidates += other.candidates
        self.references += other.references
        for cls, (tp, cand, ref) in other.per_class.items():
            row = self.per_class.setdefault(cls, [0, 0, 0])
            row[0] += tp
            row[1] += cand
            row[2] += ref


def prf(tp: int, candidates: int, references: int) -> tuple[float, float, float]:
    """Precision, recall, F1; both empty counts as perfect agreement (nothing to find, nothing found)."""
    precision = tp / candidates if candidates else (1.0 if references == 0 else 0.0)
    recall = tp / references if references else (1.0 if candidates == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def match(reference: Detections, candidate: Detections, iou: float = 0.5) -> MatchCounts:
    """Greedy matching, best candidate score first, to the highest-IoU unmatched reference box of the
    same class with IoU >= ``iou``."""
    counts = MatchCounts(0, len(candidate), len(reference))
    for cls in np.union1d(reference.classes, candidate.classes):
        ref_idx = np.nonzero(reference.classes == cls)[0]
        cand_idx = np.nonzero(candidate.classes == cls)[0]
        cand_idx = cand_idx[np.argsort(-candidate.scores[cand_idx], kind="stable")]
        tp = 0
        if len(ref_idx) and len(cand_idx):
            overlaps = box_iou(candidate.boxes[cand_idx], reference.boxes[ref_idx])
            free = np.ones(len(ref_idx), bool)
            for row in overlaps:
                masked = np.where(free, row, -1.0)
                best = int(np.argmax(masked))
                if masked[best] >= iou:
                    free[best] = False
                    tp += 1
        counts.tp += tp
        counts.per_class[int(cls)] = [tp, len(cand_idx), len(ref_idx)]
    return counts


def coco_ap(ground_truth: Sequence[Detections], detections: Sequence[Detections],
            category_ids: Sequence[int] | None = None) -> dict:
    """COCO AP@[.5:.95] and AP@.5, overall and per class, of ``detections`` against ``ground_truth``
    (one entry per image, same order) with pycocotools; ``None`` where no ground truth exists."""
    classes = sorted({int(c) for d in ground_truth for c in d.classes} | {int(c) for d in detections for c in d.classes})
    cat_ids = list(category_ids) if category_ids is not None else [c + 1 for c in range(max(classes, default=-1) + 1)]
    images = [{"id": i + 1} for i in range(len(ground_truth))]
    annotations = []
    for image_id, gt in enumerate(ground_truth, start=1):
        for box, cls in zip(gt.boxes.astype(float), gt.classes):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[int(cls)],
                                "bbox": [box[0], box[1], w, h], "area": max(w * h, 0.0), "iscrowd": 0})
    if not annotations:
        return {"ap": None, "ap50": None, "per_class": {}}
    results = [
        {"image_id": image_id, "category_id": cat_ids[int(cls)], "score": float(score),
         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
        for image_id, det in enumerate(detections, start=1)
        for box, score, cls in zip(det.boxes.astype(float), det.scores, det.classes)
    ]
    return evaluate_coco(images, annotations, [{"id": c} for c in cat_ids], results, cat_ids)


def evaluate_coco(images: list[dict], annotations: list[dict], categories: list[dict], results: list[dict],
                  cat_ids: Sequence[int]) -> dict:
    """Run COCOeval (bbox) quietly; AP and AP50 overall and per category index."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        if not results:
            return {"ap": 0.0, "ap50": 0.0, "per_class": {}}
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    per_class = {}
    with_gt = {a["category_id"] for a in annotations}
    for k, cat in enumerate(evaluator.params.catIds):
        if cat not in with_gt:
            continue
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        ap = float(valid.mean()) if valid.size else 0.0
        p50 = p[0][p[0] > -1]
        per_class[list(cat_ids).index(cat)] = {"ap": ap, "ap50": float(p50.mean()) if p50.size else 0.0}
    return {"ap": float(max(evaluator.stats[0], 0.0)), "ap50": float(max(evaluator.stats[1], 0.0)), "per_class": per_class}
