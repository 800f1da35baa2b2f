"""Detection: boxes, NMS, head decoders and metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.tasks import OutputInfo, TaskContext, make_task
from calibkit.tasks.boxes import Detections, box_iou, nms
from calibkit.tasks.detection_heads import find_head
from calibkit.tasks.detection_metrics import coco_ap, match, prf

SPEC = Preprocess(size=(64, 64), resize="stretch")


def dets(boxes, scores, classes):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


def test_iou_of_two_boxes_one_shifted():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10]]  # half overlaps: intersection 50, union 150
    assert box_iou(a, b)[0, 0] == pytest.approx(1 / 3)
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0


def test_nms_suppresses_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, iou=0.5).tolist() == [0, 2, 3]


def test_matching_counts_a_shifted_box_as_a_miss():
    reference = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [0, 0])
    candidate = dets([[0, 0, 10, 10], [25, 20, 35, 30]], [0.9, 0.8], [0, 0])  # second: IoU 1/3
    counts = match(reference, candidate, iou=0.5)
    assert (counts.tp, counts.candidates, counts.references) == (1, 2, 2)
    assert prf(counts.tp, counts.candidates, counts.references) == pytest.approx((0.5, 0.5, 0.5))
    assert prf(0, 0, 3) == (0.0, 0.0, 0.0), "finding nothing is not agreement"
    assert prf(0, 0, 0) == (1.0, 1.0, 1.0)


def test_matching_needs_the_same_class():
    counts = match(dets([[0, 0, 10, 10]], [0.9], [0]), dets([[0, 0, 10, 10]], [0.9], [1]))
    assert counts.tp == 0 and counts.per_class == {0: [0, 0, 1], 1: [0, 1, 0]}


def test_coco_ap_through_pycocotools():
    truth = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0, 0])]
    assert coco_ap(truth, truth)["ap50"] == pytest.approx(1.0)
    shifted = [dets([[0, 0, 10, 10], [25, 20, 35, 30]], [0.9, 0.8], [0, 0])]
    # the exact box first: precision 1 up to recall 0.5, 51 of COCO's 101 recall points
    assert coco_ap(truth, shifted)["ap50"] == pytest.approx(51 / 101, abs=1e-6)
    assert coco_ap(truth, [Detections.empty()])["ap50"] == 0.0


def gfl_outputs(size=(64, 64), classes=3, bins=8):
    """One hand-built PicoDet-style level per stride: one confident anchor at stride 8, cell (2, 3)."""
    outputs, values = [], {}
    for stride in (8, 16, 32, 64):
        cells = math.ceil(size[0] / stride) * math.ceil(size[1] / stride)
        scores = np.zeros((1, cells, classes), np.float32)
        dist = np.full((1, cells, 4 * bins), -10.0, np.float32)
        if stride == 8:
            anchor = 2 * math.ceil(size[1] / 8) + 3  # row 2, column 3: centre (28, 20)
            scores[0, anchor, 1] = 0.9
            for side, distance in enumerate((2, 1, 2, 1)):  # left, top, right, bottom in strides
                dist[0, anchor, side * bins + distance] = 10.0
        outputs += [OutputInfo(f"s{stride}", (1, cells, classes)), OutputInfo(f"d{stride}", (1, cells, 4 * bins))]
        values[f"s{stride}"], values[f"d{stride}"] = scores, dist
    return outputs, values


def test_gfl_head_decodes_a_picodet_style_anchor():
    outputs, values = gfl_outputs()
    name, decode = find_head(outputs, (64, 64))
    assert name == "gfl"
    [found] = decode(values, (64, 64), 0.3, 0.5)
    assert found.classes.tolist() == [1] and found.scores.tolist() == pytest.approx([0.9])
    np.testing.assert_allclose(found.boxes[0], [28 - 16, 20 - 8, 28 + 16, 20 + 8], atol=1e-2)


def test_yolo_heads_decode_centre_boxes():
    v8 = np.zeros((1, 4 + 2, 10), np.float32)
    v8[0, :, 3] = [20, 30, 10, 4, 0.1, 0.8]
    _, decode = find_head([OutputInfo("o", (1, 6, 10))], (64, 64))
    [found] = decode({"o": v8}, (64, 64), 0.25, 0.5)
    np.testing.assert_allclose(found.boxes, [[15, 28, 25, 32]])
    assert found.classes.tolist() == [1]
    v5 = np.zeros((1, 12, 7), np.float32)
    v5[0, 5] = [20, 30, 10, 4, 0.5, 0.9, 0.2]  # objectness 0.5 x class 0.9
    name, decode = find_head([OutputInfo("o", (1, 12, 7))], (64, 64))
    [found] = decode({"o": v5}, (64, 64), 0.25, 0.5)
    assert name == "yolov5" and found.scores.tolist() == pytest.approx([0.45])


def test_models_that_end_in_nms_are_read_as_they_are():
    rows = np.array([[1, 0.9, 0, 0, 10, 10], [0, 0.2, 5, 5, 9, 9], [2, 0.8, 1, 1, 4, 4]], np.float32)
    outputs = [OutputInfo("rows", (None, 6)), OutputInfo("num", (None,))]
    name, decode = find_head(outputs, (64, 64))
    first, second = decode({"rows": rows, "num": np.array([2, 1])}, (64, 64), 0.3, 0.5)
    assert name == "paddle-nms" and first.classes.tolist() == [1] and second.classes.tolist() == [2]


def test_ambiguous_or_unknown_outputs_ask_for_a_head_or_a_hook():
    with pytest.raises(CalibkitError, match="--postprocess"):
        find_head([OutputInfo("a", (1, 5))], (64, 64))


def batch_of(n):
    return Batch(np.zeros((n, 3, 64, 64), np.float32), [ImageItem(f"i{k}.jpg") for k in range(n)], [(64, 64)] * n)


def test_detection_task_scores_a_candidate_that_finds_nothing_as_broken():
    outputs, values = gfl_outputs()
    task = make_task("detection", TaskContext(outputs, (64, 64), SPEC))
    reference = task.decode(values, batch_of(1))
    silent = {k: (np.zeros_like(v) if k.startswith("s") else v) for k, v in values.items()}
    scorer = task.scorer()
    scorer.add(reference, task.decode(silent, batch_of(1)), batch_of(1))
    result = scorer.result()
    assert result["recall"] == 0.0 and result["f1"] == 0.0 and result["ap50"] == 0.0
    same = task.scorer()
    same.add(reference, reference, batch_of(1))
    assert same.result()["recall"] == 1.0 and same.result()["ap50"] == pytest.approx(1.0)


def test_user_postprocess_hook(tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text("import numpy as np\n"
                    "def decode(outputs, size):\n"
                    "    return [([[0, 0, 5, 5]], [0.9], [0]) for _ in outputs['o']]\n")
    context = TaskContext([OutputInfo("o", (1, 7))], (64, 64), SPEC, {"postprocess": f"{hook}:decode"})
    task = make_task("detection", context)
    [found] = task.decode({"o": np.zeros((1, 7))}, batch_of(1))
    assert task.head == "postprocess" and found.boxes.tolist() == [[0, 0, 5, 5]]


def test_coco_labels_give_every_model_its_true_map_in_image_pixels(tmp_path):
    import json

    spec = Preprocess(size=(64, 64), resize="letterbox")
    size = (128, 64)  # (width, height) of the decoded image: letterboxed at scale 0.5, padded top and bottom
    # two objects, given in image pixels the way an annotator draws them
    truth = np.array([[10, 6, 50, 40], [70, 10, 120, 60]], np.float32)
    annotations = {
        "images": [{"id": 7, "file_name": "photos/page.jpg", "width": 128, "height": 64}],
        "categories": [{"id": 3, "name": "text"}, {"id": 5, "name": "figure"}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": cat, "area": float((b[2] - b[0]) * (b[3] - b[1])),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "iscrowd": 0}
                        for i, (b, cat) in enumerate(zip(truth, (3, 5)))],
    }
    labels = tmp_path / "instances.json"
    labels.write_text(json.dumps(annotations))
    # the same boxes as the model sees them: the inverse of to_image_coords, from two probe points
    origin, unit = spec.to_image_coords(np.array([[0, 0, 1, 1]], np.float32), size)[0].reshape(2, 2)
    model_boxes = ((truth.reshape(-1, 2, 2) - origin) / (unit - origin)).reshape(-1, 4)
    outputs = [OutputInfo("dets", (1, 10, 6))]
    task = make_task("detection", TaskContext(outputs, (64, 64), spec, {"coco": str(labels), "head": "end2end"}))
    assert task.class_names == ["text", "figure"]
    batch = Batch(np.zeros((1, 3, 64, 64), np.float32), [ImageItem(tmp_path / "page.jpg")], [size])
    exact = dets(model_boxes, [0.9, 0.8], [0, 1])
    shifted = dets(model_boxes + np.array([8, 0, 8, 0], np.float32), [0.9, 0.8], [0, 1])
    scorer = task.scorer()
    scorer.add([exact], [shifted], batch)
    result = scorer.result()
    assert result["map50"] < 100 and result["map_drop"] > 0, "a box shifted by 16 image pixels loses true mAP"
    perfect = task.scorer()
    perfect.add([exact], [exact], batch)
    assert perfect.result()["map"] == pytest.approx(100.0) and perfect.result()["map_drop"] == pytest.approx(0.0)


@pytest.mark.parametrize("shape, size, expected", [
    ((1, 15, 21504), (1024, 1024), "detection"),   # YOLOv8n at 1024: 128^2 + 64^2 + 32^2 anchors
    ((1, 7, 84), (64, 64), "detection"),
    ((1, 25200, 85), (640, 640), "detection"),     # YOLOv5s at 640: 3 anchors per cell
    ((1, 40, 6625), (48, 320), "generic"),         # a CTC recogniser's [N, T, symbols] is not a YOLO head
])
def test_one_yolo_output_is_recognised_by_its_anchor_grid(shape, size, expected):
    import warnings

    from calibkit.tasks import detect_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert detect_task([OutputInfo("output0", shape)], size) == expected


def test_the_exporters_task_metadata_and_class_names_are_read():
    from calibkit.tasks import detect_task
    from calibkit.tasks.detection import metadata_names

    outputs = [OutputInfo("output0", (1, 7, 64))]  # no anchor grid fits: only the metadata says detection
    assert detect_task(outputs, (64, 64), {"task": "detect"}) == "detection"
    names = metadata_names({"names": "{0: 'Caption', 1: 'Footnote', 10: 'Title', 2: 'Formula'}"})
    assert names[:3] == ["Caption", "Footnote", "Formula"] and names[10] == "Title" and len(names) == 11
    assert metadata_names({"names": "not a literal ("}) == [] and metadata_names({}) == []


def test_an_end_to_end_yolo_export_with_nms_is_read_from_its_metadata():
    """Ultralytics' export with NMS: one [1, K, 6] output (x1, y1, x2, y2, score, class), task in the metadata."""
    context = TaskContext([OutputInfo("output0", (1, 300, 6))], (64, 64), SPEC,
                          metadata={"task": "detect", "end2end": "True", "names": "{0: 'text', 1: 'table'}"})
    task = make_task("auto", context)
    assert task.name == "detection" and task.head == "end2end" and task.class_names == ["text", "table"]
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [4, 4, 20, 20, 0.9, 1]
    rows[0, 1] = [30, 30, 40, 40, 0.2, 0]
    found = task.decode({"output0": rows}, batch_of(1))[0].above(task.settings["score"])
    assert found.classes.tolist() == [1] and found.boxes.tolist() == [[4, 4, 20, 20]]


def test_sensitivity_drift_weighs_class_scores_like_box_coordinates():
    """YOLOv8's [1, 4 + C, anchors]: boxes in pixels, scores in 0-1. A candidate whose scores are all
    off but whose boxes are exact must count as far off; summed over the whole output it would not."""
    context = TaskContext([OutputInfo("output0", (1, 7, 336))], (128, 128), SPEC, metadata={"task": "detect"})
    task = make_task("auto", context)
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(0, 1000, (1, 4, 336)), rng.uniform(0, 1, (1, 3, 336))], axis=1)
    scores_off = reference.copy()
    scores_off[:, 4:] = 0
    boxes_off = reference.copy()
    boxes_off[:, :4] *= 1.001  # a 0.1 % box error: a pixel at most
    drift = {name: task.drift_of(task.drift_sums({"output0": reference}, {"output0": candidate}))
             for name, candidate in (("scores", scores_off), ("boxes", boxes_off))}
    assert drift["scores"] == pytest.approx(3.0)  # three class rows, each entirely wrong
    assert drift["boxes"] < 1e-5 < drift["scores"] / 1e5
    halves = [task.drift_sums({"output0": reference[..., i::2]}, {"output0": scores_off[..., i::2]}) for i in (0, 1)]
    assert task.drift_of(halves[0] + halves[1]) == pytest.approx(drift["scores"]), "sums add over batches"


def test_inverted_and_non_finite_boxes_are_drawn_or_skipped_without_an_error():
    """A random-weight or broken detector decodes boxes with negative sizes and NaNs; the report's
    examples must still be drawn."""
    from PIL import Image

    from calibkit.tasks.detection import draw

    image = Image.new("RGB", (64, 64), "white")
    found = dets([[40, 40, 10, 10], [float("nan"), 0, 5, 5], [5, 5, 20, 30]], [0.9, 0.8, 0.7], [0, 1, 0])
    drawn = np.asarray(draw(image, found, "#ff0000", ["text", "table"]))
    assert drawn[10, 25].tolist() == [255, 0, 0], "the inverted box is drawn between its corners"
    assert (drawn != 255).any(axis=2).sum() > 0
