import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess
from calibkit.tasks import OutputInfo, TaskContext, detect_task, make_task


def test_a_4x4_probability_map_thresholded_and_compared():
    reference = np.zeros((1, 1, 4, 4), np.float32)
    reference[0, 0, :2, :2] = 0.9  # 4 foreground pixels
    candidate = np.zeros_like(reference)
    candidate[0, 0, :2, 1:3] = 0.9  # shifted one column: 2 shared, union 6
    context = TaskContext([OutputInfo("map", (None, 1, None, None))], (4, 4), Preprocess(size=(4, 4)),
                          {"threshold": "0.3"})
    task = make_task("dense", context)
    batch = Batch(np.zeros((1, 3, 4, 4)), [ImageItem("a")], [(4, 4)])
    scorer = task.scorer()
    scorer.add(task.decode({"map": reference}, batch), task.decode({"map": candidate}, batch), batch)
    result = scorer.result()
    assert result["foreground_iou"] == pytest.approx(2 / 6)
    assert result["pixel_agreement"] == pytest.approx(100 * 12 / 16)
    assert result["miou"] == pytest.approx((2 / 6 + 10 / 14) / 2)  # background: 10 shared of 14


def test_argmax_maps_of_several_classes():
    reference = np.zeros((1, 3, 2, 2), np.float32)
    reference[0, [0, 1, 2, 2], [0, 0, 1, 1], [0, 1, 0, 1]] = 1
    context = TaskContext([OutputInfo("seg", (1, 3, 2, 2))], (2, 2), Preprocess(size=(2, 2)))
    task = make_task(None, context)
    assert task.name == "dense"
    batch = Batch(np.zeros((1, 3, 2, 2)), [ImageItem("a")], [(2, 2)])
    scorer = task.scorer()
    scorer.add(task.decode({"seg": reference}, batch), task.decode({"seg": reference}, batch), batch)
    assert scorer.result()["miou"] == 1.0


def test_task_detection_from_outputs():
    size = (32, 32)
    assert detect_task([OutputInfo("logits", (None, 1000))], size) == "classification"
    with pytest.warns(UserWarning, match="--task"):
        assert detect_task([OutputInfo("seq", (None, None, 6625))], size) == "generic"



def test_a_map_that_loses_most_of_its_foreground_is_unusable_even_with_a_fair_miou():
    from calibkit.tasks.verdict import judge, rules_for

    context = TaskContext([OutputInfo("map", (None, 1, None, None))], (4, 4), Preprocess(size=(4, 4)))
    unusable, _ = rules_for(make_task("dense", context))
    # sparse text: background IoU 0.85 lifts the mean to 0.655 while the text itself is at 0.457
    verdict = judge({"miou": 0.655, "foreground_iou": 0.457}, unusable, [])
    assert verdict["status"] == "unusable" and verdict["reasons"] == ["foreground-iou 0.457 < 0.5"]


def test_each_model_row_shows_its_own_foreground():
    reference = np.zeros((1, 1, 4, 4), np.float32)
    reference[0, 0, :2, :2] = 0.9
    context = TaskContext([OutputInfo("map", (None, 1, None, None))], (4, 4), Preprocess(size=(4, 4)))
    task = make_task("dense", context)
    batch = Batch(np.zeros((1, 3, 4, 4)), [ImageItem("a")], [(4, 4)])
    scorer = task.scorer()
    scorer.add(task.decode({"map": reference}, batch), task.decode({"map": np.zeros_like(reference)}, batch), batch)
    assert scorer.result()["foreground"] == 0.0, "a candidate that finds no text shows 0 %, not FP32's 25 %"
