"""The comparison pass: per-layer drift taken inline (one pass over the images) equals the separate pass."""

import shutil

import pytest

from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import compute_ranges, get_calibrator
from calibkit.compare.run import Candidate, compare_models
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from calibkit.stats.collect import collect_statistics
from calibkit.workflow import model_task

SPEC = Preprocess(size=(32, 32))


def test_inline_per_layer_drift_equals_the_separate_pass(small_model, image_folder, tmp_path):
    items = discover_images(image_folder)
    ranges = compute_ranges(collect_statistics(small_model, items, SPEC, batch_size=4).tensors,
                            get_calibrator("minmax"))
    quantized = export_qdq(small_model, ranges, tmp_path / "q.onnx")
    separate_copy = shutil.copy(quantized, tmp_path / "q_drift.onnx")
    task = model_task(small_model, SPEC, "classification", items=items)
    inline = compare_models(small_model, [Candidate("int8", "int8", quantized, quantized)], items, SPEC, task,
                            batch_size=4, layer_images=7)
    separate = compare_models(small_model, [Candidate("int8", "int8", quantized, separate_copy)], items, SPEC, task,
                              batch_size=4, layer_images=7)
    assert inline["layer_images"] == separate["layer_images"] == 7
    assert "layer_pass_s" not in inline["timings"] and separate["timings"]["layer_pass_s"] > 0, \
        "no second pass when inline"
    got = {row["tensor"]: row for row in inline["candidates"][0]["layers"]}
    expected = {row["tensor"]: row for row in separate["candidates"][0]["layers"]}
    assert got.keys() == expected.keys() and len(got) >= 8
    for tensor, row in expected.items():
        for key in ("sqnr_db", "cosine", "max_abs_error", "max_rel_error"):
            assert got[tensor][key] == pytest.approx(row[key], rel=1e-4, abs=1e-6), (tensor, key)
    metrics = inline["candidates"][0]["metrics"]  # exposed tensors change ORT's fusions: rounding-level changes
    for key, value in separate["candidates"][0]["metrics"].items():
        assert metrics[key] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-9)), key


def test_models_too_large_to_hold_together_run_one_at_a_time_with_the_same_result(small_model, image_folder, tmp_path,
                                                                                   monkeypatch):
    import calibkit.compare.run as run
    from calibkit.workflow import fp16_candidate

    items = discover_images(image_folder)
    ranges = compute_ranges(collect_statistics(small_model, items, SPEC, batch_size=4).tensors,
                            get_calibrator("minmax"))
    quantized = export_qdq(small_model, ranges, tmp_path / "q.onnx")
    candidates = [Candidate("int8", "int8", quantized, quantized), fp16_candidate(small_model, tmp_path)]
    task = model_task(small_model, SPEC, "classification", items=items)
    together = compare_models(small_model, candidates, items, SPEC, task, batch_size=4, layer_images=0)
    loaded = []
    real_load = run.load
    monkeypatch.setattr(run, "load", lambda path, *args, **kwargs: loaded.append(path) or real_load(path, *args, **kwargs))
    monkeypatch.setattr("calibkit.memory.RESIDENT_WEIGHT_BYTES", 0)
    apart = compare_models(small_model, candidates, items, SPEC, task, batch_size=4, layer_images=0)
    assert loaded == [small_model, quantized, candidates[1].model], "each model loaded once, one after the other"
    for mine, theirs in zip(apart["candidates"], together["candidates"]):
        assert mine["metrics"] == theirs["metrics"] and mine["outputs"] == theirs["outputs"]
        assert mine["details"] == theirs["details"]
    assert apart["images"] == together["images"] == len(items)
