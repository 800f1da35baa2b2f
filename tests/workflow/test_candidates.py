"""A ranges JSON says which weights its run rounded: quantize and compare refuse it without them."""

import shutil

import onnx

from tests.test_cli import assert_one_line_error, run_cli
from tests.test_run_folder import calibrate


def test_a_ranges_json_copied_out_of_its_run_needs_the_runs_weights(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert calibrate(small_model, image_folder, run).returncode == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "minmax.json", alone / "minmax.json")

    def quantize(ranges, out, *extra):
        return run_cli("quantize", "--model", str(small_model), "--ranges", str(ranges), "--out", str(out),
                       "--no-engine-check", *extra)

    assert_one_line_error(quantize(alone / "minmax.json", tmp_path / "a.onnx"), "weights.npz", "--nearest-weights")
    assert not (tmp_path / "a.onnx").exists()
    compared = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                       f"int8:{alone / 'minmax.json'}", "--out", str(tmp_path / "cmp"), "--no-engine-check")
    assert_one_line_error(compared, "weights.npz")

    (alone / "weights.npz").write_bytes(b"someone else's weights")
    assert_one_line_error(quantize(alone / "minmax.json", tmp_path / "a.onnx"), "not the weights file")

    assert quantize(alone / "minmax.json", tmp_path / "nearest.onnx", "--nearest-weights").returncode == 0
    shutil.copy(run / "weights.npz", alone / "weights.npz")
    assert quantize(alone / "minmax.json", tmp_path / "copied.onnx").returncode == 0
    assert quantize(run / "minmax.json", tmp_path / "inrun.onnx").returncode == 0
    weights = {t.name: t.raw_data for t in onnx.load(tmp_path / "copied.onnx").graph.initializer}
    assert weights == {t.name: t.raw_data for t in onnx.load(tmp_path / "inrun.onnx").graph.initializer}
    nearest = {t.name: t.raw_data for t in onnx.load(tmp_path / "nearest.onnx").graph.initializer}
    assert nearest != weights, "the run's weights differ from round-to-nearest, so the check matters"
