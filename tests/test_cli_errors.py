"""Bad input through the real CLI: one ``calibkit: error:`` line naming the file and the fix, exit 2, no
traceback, nothing half-written, checked before any image is read."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.test_cli import assert_one_line_error, run_cli
from tests.test_run_folder import calibrate


def _unprivileged(*args: str) -> subprocess.CompletedProcess:
    """The CLI without the power to read what permission bits forbid (root reads everything otherwise)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv, so no folder is unreadable")
        dropped = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}"]
    return subprocess.run([*prefix, sys.executable, "-m", "calibkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "CALIBKIT_QUIET": "1"})


def test_an_unreadable_image_folder_is_one_line(small_model, image_folder):
    image_folder.chmod(0)
    try:
        done = _unprivileged("eval", "--model", str(small_model), "--images", str(image_folder))
    finally:
        image_folder.chmod(0o755)
    assert_one_line_error(done, str(image_folder), "cannot read the image folder", "Permission denied")


@pytest.fixture(scope="module")
def minmax_run(small_model, tmp_path_factory):
    from tests.conftest import write_images

    images = tmp_path_factory.mktemp("images")
    write_images(images, 6)
    run = tmp_path_factory.mktemp("runs") / "run"
    assert calibrate(small_model, images, run).returncode == 0
    return run


def test_quantize_refuses_a_folder_as_out_a_missing_model_and_an_empty_ranges_file(small_model, minmax_run,
                                                                                    tmp_path):
    def quantize(model, ranges, out):
        return run_cli("quantize", "--model", str(model), "--ranges", str(ranges), "--out", str(out),
                       "--no-engine-check")

    ranges = minmax_run / "minmax.json"
    folder = tmp_path / "existing"
    folder.mkdir()
    assert_one_line_error(quantize(small_model, ranges, folder), str(folder), "is a folder")
    assert_one_line_error(quantize(tmp_path / "missing.onnx", ranges, tmp_path / "q.onnx"), "missing.onnx",
                          "does not exist")
    empty = tmp_path / "empty.json"
    document = json.loads(ranges.read_text())
    document["tensors"] = {}
    empty.write_text(json.dumps(document))
    shutil.copy(minmax_run / "weights.npz", tmp_path / "weights.npz")
    assert_one_line_error(quantize(small_model, empty, tmp_path / "q.onnx"), "empty.json", "holds no tensor ranges")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json", "existing", "weights.npz"]


@pytest.mark.parametrize("bad, fragment", [
    (["--fail-on", "top1drop>1"], "top1drop"),
    (["--task", "detection"], "fit none of the known heads"),
    (["--task-opt", "bogus=1"], "unknown --task-opt bogus"),
    (["--accuracy-budget", "-1"], "must be 0 or more"),
    (["--layer-seconds", "0"], "--layer-seconds"),
])
def test_calibrate_compare_checks_every_option_before_any_work(small_model, image_folder, tmp_path, bad, fragment):
    out = tmp_path / "run"
    done = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(out),
                   "--compare", "--no-engine-check", *bad)
    assert_one_line_error(done, fragment)
    assert "calibrated on" not in done.stderr, "nothing ran before the check"
    assert not out.exists(), "no empty --out folder is left"


def test_compare_refuses_a_candidate_listed_twice_before_exporting_it(small_model, image_folder, tmp_path):
    out = tmp_path / "cmp"
    done = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                   "fp16,fp16", "--out", str(out), "--no-engine-check")
    assert_one_line_error(done, "--candidates names fp16 more than once")
    assert not out.exists()


@pytest.mark.parametrize("option, value, fragment", [
    ("--size", "-1x224", "got '-1x224'"),
    ("--size", "2x", "got '2x'"),
    ("--mean", "1,x,3", "got '1,x,3'"),
])
def test_option_errors_name_the_option_not_argparse_internals(small_model, image_folder, option, value, fragment):
    done = run_cli("eval", "--model", str(small_model), "--images", str(image_folder), option, value)
    assert_one_line_error(done, option, fragment)
    assert "_size" not in done.stderr and "_floats3" not in done.stderr and "expected one argument" not in done.stderr


def test_an_empty_model_file_is_called_empty(image_folder, tmp_path):
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("eval", "--model", str(empty), "--images", str(image_folder)), "model.onnx",
                          "is empty")


def test_all_plus_one_more_method_calibrates_every_method_and_the_extra(small_model, image_folder, tmp_path):
    from calibkit.calib.registry import available_calibrators, get_calibrator

    done = calibrate(small_model, image_folder, tmp_path / "run", "--method", "all,percentile:99.9",
                     "--weight-rounding", "nearest")
    assert done.returncode == 0, done.stderr
    labels = {get_calibrator(name).label for name in available_calibrators()} | {"percentile-99.9"}
    assert {p.stem for p in (tmp_path / "run").glob("*.cache")} == labels


def test_a_decompression_bomb_warning_names_the_file(small_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    side = int((Image.MAX_IMAGE_PIXELS * 1.02) ** 0.5) + 1  # past the warning limit, under the refusal one
    Image.new("L", (side, side), 128).save(folder / "huge.png")
    done = run_cli("eval", "--model", str(small_model), "--images", str(folder))
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "decompression" in line.lower()]
    assert len(warned) == 1 and "huge.png" in warned[0] and warned[0].startswith("calibkit: warning:"), warned
