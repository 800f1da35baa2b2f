"""Detection: boxes decoded from the model's head, compared with FP32's own detections (precision,
recall, F1, AP50, AP50:95 per class and overall) and, with a COCO annotations file, true mAP."""

from __future__ import annotations

import ast
import base64
import io
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from calibkit.colours import REFERENCE
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.errors import CalibkitError
from calibkit.tasks.base import Metric, Option, OutputInfo, Scorer, Task, TaskContext
from calibkit.tasks.boxes import Detections
from calibkit.tasks.detection_heads import HEADS, find_head, load_postprocess, single_output_head, user_decoder
from calibkit.tasks.detection_metrics import MatchCounts, coco_ap, evaluate_coco, match, prf
from calibkit.tasks.registry import register_task

# Detections kept for AP are those above this score (COCO practice); the confident ones (``score``)
# are the pseudo ground truth and what precision/recall count.
AP_MIN_SCORE = 0.05


class CocoLabels:
    """A COCO annotations file, matched to images by file name; classes map to sorted category ids."""

    def __init__(self, path: Path) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            self.images = {Path(im["file_name"]).name: im for im in data["images"]}
            self.annotations = data["annotations"]
            self.categories = sorted(data["categories"], key=lambda c: c["id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibkitError(f"{path}: not a COCO annotations file ({type(exc).__name__}: {exc}); "
                                "pass a JSON with images, annotations and categories") from exc
        self.cat_ids = [c["id"] for c in self.categories]

    def evaluate(self, detections: Sequence[tuple[str, np.ndarray, Detections]]) -> dict:
        """COCO AP of ``(file name, boxes in image pixels, detections)`` over the images they cover."""
        covered = [self.images[name] for name, _, _ in detections if name in self.images]
        ids = {im["id"] for im in covered}
        results = [
            {"image_id": self.images[name]["id"], "category_id": self.cat_ids[int(cls)], "score": float(score),
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for name, boxes, det in detections if name in self.images
            for b, score, cls in zip(boxes.tolist(), det.scores, det.classes) if int(cls) < len(self.cat_ids)
        ]
        annotations = [a for a in self.annotations if a["image_id"] in ids]
        return evaluate_coco(covered, annotations, self.categories, results, self.cat_ids)


class DetectionScorer(Scorer):
    """Per image: matching counts at the confidence threshold; all detections kept for COCO AP."""

    def __init__(self, task: "Detection") -> None:
        self.task = task
        self.counts = MatchCounts()
        self.reference: list[Detections] = []
        self.candidate: list[Detections] = []
        self.items: list[tuple[Path, tuple[int, int]]] = []
        self.image_f1: list[float] = []
        self._ap: tuple[int, dict] | None = None

    def add(self, reference: Sequence[Detections], candidate: Sequence[Detections], batch: Batch) -> None:
        score, iou = self.task.settings["score"], self.task.settings["match_iou"]
        for ref, cand, item, size in zip(reference, candidate, batch.items, batch.sizes):
            counts = match(ref.above(score), cand.above(score), iou)
            self.counts.add(counts)
            self.image_f1.append(prf(counts.tp, counts.candidates, counts.references)[2])
            self.reference.append(ref)
            self.candidate.append(cand)
            self.items.append((item.path, size))

    def merge(self, other: "DetectionScorer") -> None:
        self.counts.add(other.counts)
        self.reference.extend(other.reference)
        self.candidate.extend(other.candidate)
        self.items.extend(other.items)
        self.image_f1.extend(other.image_f1)
        self._ap = None

    def ap_vs_fp32(self) -> dict:
        """COCO AP of the candidate's detections against FP32's confident ones, computed once per set of images."""
        if self._ap is None or self._ap[0] != len(self.reference):
            score = self.task.settings["score"]
            self._ap = (len(self.reference), coco_ap([r.above(score) for r in self.reference], self.candidate))
        return self._ap[1]

    def result(self) -> dict[str, float | None]:
        precision, recall, f1 = prf(self.counts.tp, self.counts.candidates, self.counts.references)
        ap = self.ap_vs_fp32()
        n = max(len(self.reference), 1)
        # AP ranks every box scored above AP_MIN_SCORE: a candidate with no box above the threshold can still
        # rank its low-scored boxes perfectly (AP50 1.000 beside recall 0); it finds nothing, so its AP is 0
        if not self.counts.candidates:
            ap = {**ap, "ap50": 0.0, "ap": 0.0}
        out = {"precision": precision, "recall": recall, "f1": f1, "ap50": ap["ap50"], "ap": ap["ap"],
               "score_reach": self._score_reach(),
               "boxes_per_image": self.counts.candidates / n, "map": None, "map50": None, "map_drop": None}
        labels = self.task.coco
        if labels is not None:
            truth = labels.evaluate(self._in_image_pixels(self.candidate))
            ref_truth = labels.evaluate(self._in_image_pixels(self.reference))
            out.update({"map": 100 * truth["ap"], "map50": 100 * truth["ap50"],
                        "map_drop": 100 * (ref_truth["ap"] - truth["ap"])})
        return out

    def _score_reach(self) -> float | None:
        """The candidate's highest score over FP32's: well under 1 where a quantization range caps the score
        output (no threshold above the cap can be passed, whatever the threshold is set to)."""
        top = max((float(d.scores.max()) for d in self.reference if len(d)), default=0.0)
        if top <= 0:
            return None
        return max((float(d.scores.max()) for d in self.candidate if len(d)), default=0.0) / top

    def details(self) -> dict:
        """Per class: reference boxes, candidate boxes, precision, recall, F1 and AP against FP32."""
        ap = self.ap_vs_fp32()["per_class"]
        names = self.task.class_names
        rows = []
        for cls, (tp, cand, ref) in sorted(self.counts.per_class.items()):
            precision, recall, f1 = prf(tp, cand, ref)
            scored = ap.get(cls, {}) if cand or not ref else {"ap50": 0.0, "ap": 0.0}  # see result()
            rows.append({"class": names[cls] if cls < len(names) else str(cls), "fp32_boxes": ref,
                         "candidate_boxes": cand, "precision": precision, "recall": recall, "f1": f1,
                         "ap50": scored.get("ap50"), "ap": scored.get("ap")})
        note = None
        if any(row["candidate_boxes"] == 0 and row["fp32_boxes"] for row in rows):
            note = (f"AP is 0 where the candidate has no box scored {self.task.settings['score']:g} or more: AP over "
                    "its boxes below that threshold could look perfect while the candidate finds nothing.")
        return {"per_class": rows, "per_class_note": note, "score_threshold": self.task.settings["score"],
                "head": self.task.head,
                "fp32_boxes_per_image": self.counts.references / max(len(self.reference), 1)}

    def examples(self, preprocess: Preprocess, limit: int, colour: str = "#d62728") -> list[dict]:
        """The images with the lowest F1 against FP32, FP32's boxes (left, black) beside the candidate's
        (right, in ``colour``), each labelled with its class name."""
        score = self.task.settings["score"]
        worst = [i for i in np.argsort(self.image_f1, kind="stable")[:limit] if self.image_f1[i] < 1.0]
        figures = []
        for index in worst:
            path, _ = self.items[index]
            view = preprocess.geometry(decode_image(path))
            left = draw(view, self.reference[index].above(score), REFERENCE, self.task.class_names)
            right = draw(view, self.candidate[index].above(score), colour, self.task.class_names)
            figures.append({"caption": f"{path.name}: FP32 {len(self.reference[index].above(score))} boxes (left, "
                                       f"black), candidate {len(self.candidate[index].above(score))} (right, in its "
                                       "colour), "
                                       f"F1 {self.image_f1[index]:.2f}",
                            "png_base64": side_by_side(left, right)})
        return figures

    def _in_image_pixels(self, detections: Sequence[Detections]) -> list[tuple[str, np.ndarray, Detections]]:
        preprocess = self.task.context.preprocess
        return [(path.name, preprocess.to_image_coords(det.boxes, size), det)
                for (path, size), det in zip(self.items, detections)]


def draw(image: Image.Image, detections: Detections, colour: str, names: Sequence[str] = ()) -> Image.Image:
    """``detections`` as boxes in ``colour`` on a copy of ``image``, each with its class name (or number)."""
    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    for box, cls in zip(detections.boxes.tolist(), detections.classes.tolist()):
        if not all(math.isfinite(v) for v in box):
            continue  # a broken candidate's box: counted as a wrong box in the metrics, not drawable
        x0, y0, x1, y1 = box
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]  # a negative width or height decodes inverted
        pen.rectangle(box, outline=colour, width=width)
        label = names[cls] if cls < len(names) else str(cls)
        left, top, right, bottom = pen.textbbox((box[0], box[1]), label)
        pen.rectangle((left, top - (bottom - top), right + 2, top), fill=colour)
        pen.text((box[0] + 1, box[1] - (bottom - top) - 1), label, fill="white")
    return canvas


def side_by_side(left: Image.Image, right: Image.Image, max_width: int = 900) -> str:
    """Both images in one PNG (4 px gap), scaled to ``max_width``, as base64 for an inline <img>."""
    gap = 4
    joined = Image.new("RGB", (left.width + right.width + gap, max(left.height, right.height)), (255, 255, 255))
    joined.paste(left, (0, 0))
    joined.paste(right, (left.width + gap, 0))
    if joined.width > max_width:
        joined = joined.resize((max_width, round(joined.height * max_width / joined.width)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    joined.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def given_names(text: str) -> list[str]:
    """Class names from ``--task-opt names=``: a text file with one name per line, or a comma list."""
    if text and Path(text).is_file():
        try:
            return [line.strip() for line in Path(text).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibkitError(f"{text}: cannot read class names ({exc}); pass a UTF-8 text file, one per line") from exc
    return [name.strip() for name in text.split(",") if name.strip()]


def metadata_names(metadata: Mapping[str, str]) -> list[str]:
    """Class names an exporter wrote into the model's metadata: Ultralytics' ``names`` (``{0: 'person',
    ...}``, a Python literal) or a JSON list; none where the entry is missing or unreadable."""
    text = metadata.get("names", "")
    try:
        names = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return []
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return [str(names.get(i, i)) for i in range(max(names, default=-1) + 1)]
    if isinstance(names, (list, tuple)):
        return [str(name) for name in names]
    return []


@register_task
class Detection(Task):
    name = "detection"
    description = "boxes, scores and classes from a detector head (or a model that ends in NMS)"
    metrics = (
        Metric("recall", "recall vs FP32", True, "{:.3f}"),
        Metric("precision", "precision vs FP32", True, "{:.3f}"),
        Metric("f1", "F1 vs FP32", True, "{:.3f}"),
        Metric("ap50", "AP50 vs FP32", True, "{:.3f}"),
        Metric("ap", "AP50:95 vs FP32", True, "{:.3f}"),
        Metric("score_reach", "top score / FP32's", True, "{:.2f}"),
        Metric("boxes_per_image", "boxes / image", True, "{:.1f}", versus_fp32=False),
        Metric("map", "mAP (labels) %", True, versus_fp32=False, labels=True),
        Metric("map50", "mAP50 (labels) %", True, versus_fp32=False, labels=True),
        Metric("map_drop", "mAP drop (points)", False, labels=True),
    )
    # score-reach: a candidate whose scores cannot reach FP32's (a range caps them) is broken at any threshold
    unusable_if = ("recall<0.5", "precision<0.5", "score_reach<0.9")
    # boxes in one of ten wrong or missed: it works, but no one would ship it unseen
    degraded_if = ("f1<0.9",)
    exporter_tasks = ("detect",)
    options = {
        "head": Option(str, "", f"head layout: {', '.join(HEADS)} (default: recognised from the outputs)"),
        "score": Option(float, 0.4, "confidence above which a detection counts (FP32's are the pseudo ground truth)"),
        "nms_iou": Option(float, 0.5, "IoU of class-wise NMS for heads without NMS"),
        "match_iou": Option(float, 0.5, "IoU at which a candidate box matches an FP32 box"),
        "coco": Option(str, "", "COCO annotations JSON: true mAP of every model (images matched by file name)"),
        "names": Option(str, "", "class names, comma-separated or a text file with one per line (default: the "
                                 "model's metadata, else a COCO file's categories)"),
        "classes": Option(str, "", "the same as names"),
        "postprocess": Option(str, "", "module:function or file.py:function decoding outputs yourself"),
    }

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        if self.settings["postprocess"]:
            self.head, self.decoder = "postprocess", user_decoder(load_postprocess(self.settings["postprocess"]))
        else:
            # Ultralytics marks an export with NMS inside (rows of x1, y1, x2, y2, score, class) as end2end
            exported = "end2end" if context.metadata.get("end2end") == "True" else ""
            self.head, self.decoder = find_head(context.outputs, context.input_size, self.settings["head"] or exported)
        self.coco = CocoLabels(Path(self.settings["coco"])) if self.settings["coco"] else None
        self.class_names = given_names(self.settings["names"] or self.settings["classes"])
        if not self.class_names and self.coco is not None:
            self.class_names = [c.get("name", str(c["id"])) for c in self.coco.categories]
        if not self.class_names:
            self.class_names = metadata_names(context.metadata)

    @classmethod
    def detect(cls, outputs: Sequence[OutputInfo], input_size: tuple[int, int]) -> bool:
        """A multi-output head layout, or one YOLO output whose anchor count is the input's grid cells
        (any other single 3-D output may be a CTC sequence too)."""
        if len(outputs) < 2:
            return single_output_head(outputs, input_size) is not None
        return any(matcher(outputs, input_size) is not None for matcher in HEADS.values())

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[Detections]:
        return self.decoder(outputs, self.context.input_size, min(AP_MIN_SCORE, self.settings["score"]),
                            self.settings["nms_iou"])

    def scorer(self) -> DetectionScorer:
        return DetectionScorer(self)

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        return 100 * (1 - float(result["f1"])), "f1"

    def drift_sums(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> np.ndarray:
        """Noise energy and energy per output channel (along each output's shortest axis after the batch:
        a YOLO output's box rows and class rows, a score map's classes), so each channel weighs the same in
        :meth:`drift_of`. Summed over a whole output instead, box coordinates in pixels outweigh the class
        scores that decoding thresholds by five orders of magnitude, and sensitivity ranks box precision."""
        sums = []
        for name, ref in reference.items():
            ref64 = np.asarray(ref, np.float64)
            noise = (np.asarray(candidate[name], np.float64) - ref64) ** 2
            if ref64.ndim < 3:
                sums.append(np.array([[noise.sum(), (ref64 ** 2).sum()]]))
                continue
            axis = 1 + int(np.argmin(ref64.shape[1:]))
            others = tuple(a for a in range(ref64.ndim) if a != axis)
            sums.append(np.stack([noise.sum(axis=others), (ref64 ** 2).sum(axis=others)], axis=1))
        return np.concatenate(sums).ravel()
