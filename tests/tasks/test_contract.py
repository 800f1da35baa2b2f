"""Tasks keep the plug-in contract on real model outputs, and the check catches a scorer that merges wrong."""

import pytest

from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from calibkit.tasks.contract import check_task_contract
from calibkit.workflow import model_preprocess, model_task

SPEC = Preprocess(size=(32, 32))


@pytest.mark.parametrize("name", ["classification", "generic"])
def test_tasks_keep_the_contract_on_a_real_session(name, small_model, image_folder):
    items = discover_images(image_folder)[:8]
    check_task_contract(model_task(small_model, SPEC, name, items=items), small_model, items, SPEC)


def test_classification_keeps_it_on_efficientnet_and_labelled_photos(demo_model, shared_images):
    items = discover_images(shared_images, shared_images / "labels.csv")[:8]
    spec = model_preprocess(demo_model)
    check_task_contract(model_task(demo_model, spec, "classification", items=items), demo_model, items, spec, 4)


def test_the_check_catches_a_scorer_whose_merge_drops_the_other_half(small_model, image_folder, monkeypatch):
    items = discover_images(image_folder)[:8]
    task = model_task(small_model, SPEC, "classification", items=items)
    monkeypatch.setattr(type(task.scorer()), "merge", lambda self, other: None)
    with pytest.raises(AssertionError, match="!="):
        check_task_contract(task, small_model, items, SPEC)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["yolov8 detection", "ocr dense"])
def test_real_detector_and_dense_tasks_keep_the_contract(case, yolo_doclaynet, paddle_models, doc_pages):
    from dataclasses import replace

    from calibkit.data.preprocess import PRESETS

    items = discover_images(doc_pages["eval"])
    if case == "yolov8 detection":
        model, spec, options = yolo_doclaynet, model_preprocess(yolo_doclaynet), {"score": "0.3"}
    else:
        model, options = paddle_models / "ch_PP-OCRv4_det_infer.onnx", {"threshold": "0.3"}
        spec = replace(PRESETS["paddle-ocr-det"], size=(640, 640))
    task = model_task(model, spec, "auto", options, items)
    assert task.name == case.split()[-1]
    check_task_contract(task, model, items, spec)
