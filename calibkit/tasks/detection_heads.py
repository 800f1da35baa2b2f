"""Decoders for the common detector head layouts, each turning raw outputs into per-image Detections.

A head is recognised from output shapes alone; ``--task-opt head=NAME`` picks one explicitly and
``--postprocess module:function`` replaces them all. Add a layout with ``@register_head``.

| head      | outputs                                                  | examples                     |
|-----------|----------------------------------------------------------|------------------------------|
| gfl       | per stride: scores [B, N, C] + distributions [B, N, 4R]  | PP-PicoDet, GFL, NanoDet      |
| boxes     | boxes [B, A, 4] xyxy + scores [B, C, A]                  | PP-YOLOE, RT-DETR (no NMS)    |
| yolov8    | [B, 4 + C, A]: cx, cy, w, h, class scores                | YOLOv8-v11 exports            |
| yolov5    | [B, A, 5 + C]: cx, cy, w, h, objectness, class scores    | YOLOv5, YOLOv7, YOLOX        |
| paddle-nms| [K, 6] class, score, x1, y1, x2, y2 + count [B]          | PaddleDetection with NMS      |
| end2end   | [B, K, 6] x1, y1, x2, y2, score, class                   | YOLO end-to-end / NMS exports |
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.tasks.base import OutputInfo
from calibkit.tasks.boxes import Detections, cxcywh_to_xyxy, select

# (outputs by name, input (h, w), min_score, iou) -> one Detections per image
Decoder = Callable[[Mapping[str, np.ndarray], tuple[int, int], float, float], list[Detections]]
# (outputs, input size) -> a decoder bound to those outputs, or None when the layout does not fit
Matcher = Callable[[Sequence[OutputInfo], tuple[int, int]], Decoder | None]
HEADS: dict[str, Matcher] = {}

# Distribution widths 4 * (reg_max + 1) of GFL-style heads: PicoDet (reg_max 7), YOLOv8 DFL (15), GFL (16).
_DISTRIBUTION_WIDTHS = (32, 64, 68)
_STRIDES = (4, 8, 16, 32, 64, 128)


def register_head(name: str) -> Callable[[Matcher], Matcher]:
    def decorate(matcher: Matcher) -> Matcher:
        HEADS[name] = matcher
        return matcher

    return decorate


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _stride_for(cells: int, size: tuple[int, int]) -> int | None:
    for stride in _STRIDES:
        if math.ceil(size[0] / stride) * math.ceil(size[1] / stride) == cells:
            return stride
    return None


# The stride sets YOLO exports concatenate anchors over: P3-P5 (the default), P3-P6 (the -p6 models),
# P2-P5 (the -p2 models).
_YOLO_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))


def yolo_grid_fits(anchors: int | None, size: tuple[int, int], per_cell: int = 1) -> bool:
    """True when ``anchors`` is what a YOLO head of ``per_cell`` anchors per cell gives at input ``size``:
    the count of every stride's grid cells. One 3-D output fits this only by design, never by chance."""
    return anchors is not None and any(
        anchors == per_cell * sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in strides)
        for strides in _YOLO_STRIDE_SETS)


def single_output_head(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> str | None:
    """The YOLO layout one output has, recognised by its anchor count matching the input's grids (a CTC
    sequence [N, T, C] never does): ``yolov8`` [B, 4 + C, A] or ``yolov5`` [B, 3A', 5 + C]."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    _, second, third = outputs[0].shape
    if second is not None and second > 4 and yolo_grid_fits(third, size):
        return "yolov8"
    if third is not None and third > 5 and yolo_grid_fits(second, size, per_cell=3):
        return "yolov5"
    return None


def gfl_centres(size: tuple[int, int], stride: int) -> np.ndarray:
    """Anchor-point centres (x, y) of one stride's feature map, row-major, at cell centres."""
    rows, cols = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
    ys, xs = np.mgrid[0:rows, 0:cols]
    return np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)


@register_head("gfl")
def match_gfl(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """Scores and box distributions paired by anchor count; the stride follows from the count."""
    if not outputs or any(len(o.shape) != 3 or not o.shape[1] or not o.shape[2] for o in outputs):
        return None
    by_cells: dict[int, list[OutputInfo]] = {}
    for o in outputs:
        by_cells.setdefault(o.shape[1], []).append(o)
    levels = []
    for cells, pair in by_cells.items():
        dists = [o for o in pair if o.shape[2] in _DISTRIBUTION_WIDTHS]
        stride = _stride_for(cells, size)
        if len(pair) != 2 or len(dists) != 1 or stride is None:
            return None
        score = next(o for o in pair if o is not dists[0])
        levels.append((stride, score.name, dists[0].name, dists[0].shape[2] // 4))
    levels.sort()

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        boxes, scores = [], []
        for stride, score_name, dist_name, bins in levels:
            dist = np.asarray(values[dist_name], np.float32)
            distance = (softmax(dist.reshape(*dist.shape[:2], 4, bins)) * np.arange(bins)).sum(-1) * stride
            centre = np.tile(gfl_centres(size_, stride), 2)
            boxes.append(centre + distance * np.array([-1, -1, 1, 1], np.float32))
            scores.append(np.asarray(values[score_name], np.float32))
        all_boxes, all_scores = np.concatenate(boxes, axis=1), np.concatenate(scores, axis=1)
        return [select(b, s, min_score, iou) for b, s in zip(all_boxes, all_scores)]

    return decode


@register_head("boxes")
def match_boxes(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """Decoded boxes [B, A, 4] and scores [B, C, A] (PP-YOLOE exported without NMS)."""
    if len(outputs) != 2 or any(len(o.shape) != 3 for o in outputs):
        return None
    boxes = [o for o in outputs if o.shape[2] == 4]
    if len(boxes) != 1:
        return None
    scores = next(o for o in outputs if o is not boxes[0])
    if scores.shape[2] != boxes[0].shape[1]:
        return None

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        b = np.asarray(values[boxes[0].name], np.float32)
        s = np.asarray(values[scores.name], np.float32).transpose(0, 2, 1)
        return [select(bi, si, min_score, iou) for bi, si in zip(b, s)]

    return decode


@register_head("yolov8")
def match_yolov8(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """One [B, 4 + C, A] output with more anchors than channels."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    _, channels, anchors = outputs[0].shape
    if not channels or not anchors or channels <= 4 or anchors <= channels:
        return None
    name = outputs[0].name

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        raw = np.asarray(values[name], np.float32).transpose(0, 2, 1)
        boxes = cxcywh_to_xyxy(raw[..., :4])
        return [select(b, s, min_score, iou) for b, s in zip(boxes, raw[..., 4:])]

    return decode


@register_head("yolov5")
def match_yolov5(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """One [B, A, 5 + C] output with more anchors than channels; class score = objectness x class."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    _, anchors, channels = outputs[0].shape
    if not channels or not anchors or channels <= 5 or anchors <= channels:
        return None
    name = outputs[0].name

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        raw = np.asarray(values[name], np.float32)
        boxes = cxcywh_to_xyxy(raw[..., :4])
        scores = raw[..., 5:] * raw[..., 4:5]
        return [select(b, s, min_score, iou) for b, s in zip(boxes, scores)]

    return decode


@register_head("paddle-nms")
def match_paddle_nms(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """PaddleDetection's multiclass_nms: [K, 6] rows (class, score, x1, y1, x2, y2) and a count per image."""
    if len(outputs) != 2:
        return None
    rows = [o for o in outputs if len(o.shape) == 2 and o.shape[1] == 6]
    counts = [o for o in outputs if len(o.shape) == 1]
    if len(rows) != 1 or len(counts) != 1:
        return None

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        table = np.asarray(values[rows[0].name], np.float32)
        result, start = [], 0
        for count in np.asarray(values[counts[0].name]).reshape(-1).astype(int):
            part = table[start : start + count]
            start += count
            result.append(Detections(part[:, 2:6], part[:, 1], part[:, 0].astype(np.int64)).above(min_score))
        return result

    return decode


@register_head("end2end")
def match_end2end(outputs: Sequence[OutputInfo], size: tuple[int, int]) -> Decoder | None:
    """[B, K, 6] rows (x1, y1, x2, y2, score, class) after NMS inside the model."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[2] != 6:
        return None
    anchors = outputs[0].shape[1]
    if anchors is not None and anchors > 1000:
        return None
    name = outputs[0].name

    def decode(values: Mapping[str, np.ndarray], size_: tuple[int, int], min_score: float, iou: float):
        raw = np.asarray(values[name], np.float32)
        return [Detections(r[:, :4], r[:, 4], r[:, 5].astype(np.int64)).above(min_score) for r in raw]

    return decode


def find_head(outputs: Sequence[OutputInfo], size: tuple[int, int], name: str = "") -> tuple[str, Decoder]:
    """The head ``name``, or the single layout that fits ``outputs``; an error listing them otherwise."""
    if name:
        if name not in HEADS:
            raise CalibkitError(f"unknown detection head {name!r}; available: {', '.join(HEADS)}")
        decoder = HEADS[name](outputs, size)
        if decoder is None:
            raise CalibkitError(f"detection head {name!r} does not fit the model outputs {_shapes(outputs)}")
        return name, decoder
    found = [(head, d) for head, matcher in HEADS.items() if (d := matcher(outputs, size)) is not None]
    if len(found) != 1:
        which = ", ".join(h for h, _ in found) or "none"
        raise CalibkitError(
            f"detection outputs {_shapes(outputs)} fit {which} of the known heads ({', '.join(HEADS)}); "
            "pick one with --task-opt head=NAME or decode them yourself with --postprocess module:function"
        )
    return found[0]


def load_postprocess(spec: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function``, called as ``fn(outputs, input_size)``.

    It returns, per image, ``(boxes [K, 4] xyxy in input pixels, scores [K], classes [K])``.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise CalibkitError(f"--postprocess {spec!r}: expected module:function or file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or not path.is_file():
                raise CalibkitError(f"{path}: --postprocess file does not exist")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
        fn = getattr(module, attr)
    except CalibkitError:
        raise
    except Exception as exc:
        raise CalibkitError(f"--postprocess {spec!r}: cannot load ({type(exc).__name__}: {exc})") from exc
    return fn


def user_decoder(fn: Callable) -> Decoder:
    """Wrap a user post-processing function as a Decoder (its detections are kept as returned)."""

    def decode(values: Mapping[str, np.ndarray], size: tuple[int, int], min_score: float, iou: float):
        result = []
        for boxes, scores, classes in fn(dict(values), size):
            result.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                                     np.asarray(classes, np.int64)).above(min_score))
        return result

    return decode


def _shapes(outputs: Sequence[OutputInfo]) -> str:
    return ", ".join(f"{o.name} {['?' if d is None else d for d in o.shape]}" for o in outputs)
