"""The real model on the real shared photos: eval, calibrate + compare, and the demo's report."""

import json

import pytest

from calibkit.cli import main

pytestmark = pytest.mark.slow


def test_eval_fp32_accuracy_on_shared_images(demo_model, shared_images, capsys):
    assert main(["eval", "--model", str(demo_model), "--images", str(shared_images), "--batch-size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 1000
    assert 80.0 <= summary["top1"] <= 95.0 and summary["top5"] >= 94.0


def test_int8_stays_within_one_point_and_is_faster(demo_model, shared_images, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(demo_model), "--images", str(shared_images), "--out", str(run),
                 "--method", "percentile:99.99", "--samples", "200", "--compare", "--bench-batch-sizes", "8",
                 "--fail-on-top1-drop", "1.0"]) == 0
    document = json.loads((run / "report.json").read_text())
    comparison = document["comparison"]
    int8 = next(c for c in comparison["candidates"] if c["precision"] == "int8")
    assert int8["metrics"]["top1_drop"] <= 1.0 and int8["verdict"]["status"] == "usable"
    assert int8["metrics"]["agreement"] >= 94.0
    layers = int8["layers"]
    assert len(layers) > 80 and all(l["cosine"] > 0.9 for l in layers)
    speed = {(r["candidate"], r["batch"]): r for r in document["speed"]}
    assert speed[(int8["name"], 8)]["speedup"] > 1.0
    html = (run / "report.html").read_text()
    assert "int8 percentile-99.99" in html and "Histograms of the worst layers" in html
    assert "Classification metrics" in html and "top-1 agreement with FP32" in html


def test_demo_writes_a_complete_report(demo_model, shared_images, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "100", "--sampler", "kmeans", "--method", "minmax",
                 "--sensitivity-images", "20", "--bench-batch-sizes", "1"]) == 0
    document = json.loads((out / "report.json").read_text())
    comparison = document["comparison"]
    assert comparison["images"] == 900 and comparison["labelled"], "the demo evaluates on images it did not calibrate on"
    assert "100 calibration images left out of the evaluation" in comparison["note"]
    assert [c["name"] for c in comparison["candidates"]] == ["int8 minmax", "fp16"]
    sensitivity = comparison["sensitivity"]
    assert len(sensitivity["ranking"]) == 50 and sensitivity["budget"]["met"]
    assert sensitivity["budget"]["steps"][-1]["loss"] <= 0.5
    assert (out / "minmax.mixed.qdq.onnx").is_file() == bool(sensitivity["budget"]["kept_float"]), \
        "a mixed-precision model exactly when a layer stays float"
    assert [row["images"] for row in document["sufficiency"]["methods"]["minmax"]] == [50, 100]
    html = (out / "report.html").read_text()
    for section in ("Verdict", "Classification metrics", "Every model output", "Per-layer drift", "Layer sensitivity", "Were enough calibration images used",
                    "Histograms of the worst layers", "Provenance"):
        assert section in html
    assert "<script src=" not in html and "<link " not in html, "report must be self-contained"
