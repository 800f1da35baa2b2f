"""`calibkit import-cache`: TensorRT calibration caches read back as ranges, from calibkit and from
TensorRT's own layout (other tools' runs), and refused when they were written for another model."""

import json

import onnx
import pytest

from calibkit.artifacts.trt_cache import format_cache, read_cache
from tests.test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def small_run(small_model, tmp_path_factory):
    from tests.conftest import write_images

    images = write_images(tmp_path_factory.mktemp("imgs") / "i", 10)[0].parent
    run = tmp_path_factory.mktemp("run") / "run"
    done = run_cli("calibrate", "--model", str(small_model), "--images", str(images), "--out", str(run),
                   "--samples", "0", "--method", "minmax", "--size", "32", "--no-engine-check")
    assert done.returncode == 0, done.stderr
    return run, images


def test_calibkits_own_cache_round_trips_to_the_same_ranges(small_model, small_run, tmp_path):
    run, images = small_run
    done = run_cli("import-cache", "--model", str(small_model), "--cache", str(run / "minmax.cache"),
                   "--out", str(tmp_path / "imported.json"))
    assert done.returncode == 0, done.stderr
    own = json.loads((run / "minmax.json").read_text())["tensors"]
    imported = json.loads((tmp_path / "imported.json").read_text())["tensors"]
    assert set(imported) == set(read_cache(run / "minmax.cache").scales)
    for name, entry in imported.items():
        assert entry["amax"] == pytest.approx(own[name]["amax"], rel=1e-6)
    done = run_cli("quantize", "--model", str(small_model), "--ranges", str(tmp_path / "imported.json"),
                   "--out", str(tmp_path / "q.onnx"), "--no-engine-check")
    assert done.returncode == 0, done.stderr
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    done = run_cli("compare", "--model", str(small_model), "--images", str(images), "--size", "32",
                   "--candidates", f"int8:{run}:minmax,int8:{tmp_path / 'imported.json'}", "--out", str(tmp_path / "c"),
                   "--no-bench", "--no-engine-check")
    assert done.returncode == 0, done.stderr
    names = [c["name"] for c in json.loads((tmp_path / "c" / "report.json").read_text())["comparison"]["candidates"]]
    assert names == ["int8 minmax", "int8 imported"], "the imported ranges are compared beside calibkit's"


def test_tensorrts_own_layout_with_parser_made_tensors(small_model, tmp_path):
    # TensorRT 8.6's calibrators (trtexec, Polygraphy, Ultralytics) name tensors the ONNX parser made
    # itself; the file as saved on Windows has CRLF line ends
    scales = {"input": 0.0123, "r1": 0.0472, "(Unnamed Layer* 7) [Shuffle]_output": 0.01, "c3": 0.03}
    text = format_cache(scales, "EntropyCalibration2", 8601)
    cache = tmp_path / "trtexec.cache"
    cache.write_text(text.replace("\n", "\r\n"))
    done = run_cli("import-cache", "--model", str(small_model), "--cache", str(cache), "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert "1 cache entries name no tensor" in done.stderr and "(Unnamed Layer* 7) [Shuffle]_output" in done.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert sorted(document["tensors"]) == ["c3", "input", "r1"]
    assert document["tensors"]["r1"]["amax"] == pytest.approx(0.0472 * 127, rel=1e-6)
    assert document["trt_algorithm"] == "EntropyCalibration2" and document["params"]["trt_version"] == 8601


def test_a_cache_of_another_model_is_refused_in_one_line(small_model, tmp_path):
    cache = tmp_path / "other.cache"
    cache.write_text(format_cache({"images": 0.01, "/model.0/conv/Conv_output_0": 0.2, "/model.1/act": 0.1}))
    done = run_cli("import-cache", "--model", str(small_model), "--cache", str(cache), "--out", str(tmp_path / "r.json"))
    assert_one_line_error(done, "other.cache: 0 of its 3 tensor entries name tensors of", "written for another model")
    assert not (tmp_path / "r.json").exists()
