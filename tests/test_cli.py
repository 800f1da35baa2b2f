"""The command line: one-line errors with exit code 2 for bad input, and deterministic outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from calibkit.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CALIBKIT_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "calibkit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("calibkit: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_missing_folder(small_model, tmp_path):
    result = run_cli("eval", "--model", str(small_model), "--images", str(tmp_path / "missing"))
    assert_one_line_error(result, "missing: image folder does not exist")


def test_empty_folder(small_model, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("eval", "--model", str(small_model), "--images", str(tmp_path / "empty")),
                          "no images found")


def test_images_both_at_the_top_and_in_a_subfolder_are_refused_not_half_read(small_model, image_folder, tmp_path):
    from tests.conftest import write_images

    write_images(image_folder / "rejected", 1)
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out",
                     str(tmp_path / "run"), "--samples", "0")
    assert_one_line_error(result, "12 image(s) at the top level and 1 in subfolders (rejected)", "use one layout")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_non_image_and_truncated_files_then_skip_bad(small_model, image_folder):
    (image_folder / "notes.jpg").write_text("this is text")
    good = (image_folder / "img_000.jpg").read_bytes()
    (image_folder / "img_001.jpg").write_bytes(good[: len(good) // 3])
    result = run_cli("eval", "--model", str(small_model), "--images", str(image_folder))
    assert_one_line_error(result, "img_001.jpg", "--skip-bad")
    skipped = run_cli("eval", "--model", str(small_model), "--images", str(image_folder), "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    summary = json.loads(skipped.stdout)
    assert summary["skipped"] == 2 and summary["images"] == 11
    assert "skipped 2 unreadable image(s)" in skipped.stderr and "pass --skip-bad" not in skipped.stderr
    assert all(line.startswith("calibkit: ") for line in skipped.stderr.splitlines() if line.strip())


@pytest.mark.parametrize("sampler", ["random", "kmeans"])
def test_skip_bad_holds_when_a_subset_is_sampled(small_model, image_folder, tmp_path, sampler):
    (image_folder / "img_003.jpg").write_bytes((image_folder / "img_003.jpg").read_bytes()[:200])
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out",
                     str(tmp_path / "run"), "--samples", "4", "--sampler", sampler, "--method", "minmax", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable image(s) of 12" in result.stderr
    used = (tmp_path / "run" / "images.txt").read_text().splitlines()
    assert len(used) == 4 and not any(line.endswith("img_003.jpg") for line in used)


def test_model_without_image_input(tmp_path, image_folder):
    from onnx import TensorProto, helper, save

    node = helper.make_node("Identity", ["ids"], ["out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, [1, 16])])
    save(helper.make_model(graph), str(tmp_path / "text.onnx"))
    result = run_cli("eval", "--model", str(tmp_path / "text.onnx"), "--images", str(image_folder))
    assert_one_line_error(result, "text.onnx", "float image tensor")


def test_size_mismatch_with_fixed_model(tmp_path, image_folder):
    from tests.conftest import build_small_cnn
    import onnx

    model = onnx.load(str(build_small_cnn(tmp_path / "m.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    result = run_cli("eval", "--model", str(tmp_path / "fixed.onnx"), "--images", str(image_folder), "--size", "64")
    assert_one_line_error(result, "model input is 32x32 but --size asks for 64x64")


def test_unwritable_output_leaves_nothing(small_model, image_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder),
                     "--out", str(blocker / "run"))
    assert_one_line_error(result, "cannot create output folder")


def test_unknown_method_lists_choices(small_model, image_folder, tmp_path):
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder),
                     "--out", str(tmp_path / "run"), "--method", "entropy3")
    assert_one_line_error(result, "unknown calibration method 'entropy3'", "entropy2", "percentile")
    assert not (tmp_path / "run").exists()


def test_unknown_weight_rounding_is_refused_before_any_image_is_read(small_model, image_folder, tmp_path):
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder),
                     "--out", str(tmp_path / "run"), "--weight-rounding", "adaround")
    assert_one_line_error(result, "unknown weight rounding 'adaround'", "gptq, nearest")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_calibrate_writes_every_artefact_and_identical_bytes_twice(small_model, image_folder, tmp_path, capsys):
    argv = ["calibrate", "--model", str(small_model), "--images", str(image_folder), "--method", "all",
            "--samples", "8", "--seed", "3", "--batch-size", "3"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    for label in ("entropy2", "minmax", "mse", "percentile-99.99"):
        for suffix in (".cache", ".json", ".qdq.onnx", ".ort.onnx"):
            assert f"{label}{suffix}" in names
    assert {"stats.npz", "weights.npz", "images.txt"} <= set(names)
    for name in names:
        if name != "timings.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert set(json.loads((tmp_path / "a" / "timings.json").read_text())) >= {"statistics_s", "total_s"}
    assert len((tmp_path / "a" / "images.txt").read_text().splitlines()) == 8
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["coverage"]["pool"] == 12 and summary["coverage"]["chosen"] == 8
    assert summary["coverage"]["mean_nearest_distance"] > 0
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


def test_quantize_and_compare_gate(small_model, image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax", "--samples", "0"]) == 0
    out = tmp_path / "custom.onnx"
    assert main(["quantize", "--model", str(small_model), "--ranges", str(run / "minmax.json"),
                 "--out", str(out), "--exclude", "fc"]) == 0
    assert out.is_file()
    plain = tmp_path / "plain.onnx"
    assert main(["quantize", "--model", str(small_model), "--ranges", str(run / "minmax.json"),
                 "--out", str(plain), "--exclude", "fc", "--nearest-weights"]) == 0
    assert plain.read_bytes() != out.read_bytes()  # the run's weights.npz: GPTQ levels, corrected biases
    common = ["compare", "--model", str(small_model), "--images", str(image_folder),
              "--candidates", f"int8:{run},fp16", "--out", str(tmp_path / "cmp"), "--no-bench"]
    assert main(common) == 0
    document = json.loads((tmp_path / "cmp" / "report.json").read_text())
    names = [c["name"] for c in document["comparison"]["candidates"]]
    assert names == ["int8 minmax", "fp16"]
    assert (tmp_path / "cmp" / "report.html").read_text().count("<svg") >= 1
    assert main(common + ["--fail-on-top1-drop", "-1"]) == 3


def test_bench_prints_a_table_with_speedups(small_model, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--model", str(small_model), "--fp16", "--batch-sizes", "1,2", "--out", str(tmp_path),
                 "--json", str(out_json)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["candidate", "backend", "batch"]
    rows = json.loads(out_json.read_text())
    assert {(r["candidate"], r["backend"], r["batch"]) for r in rows} == {
        (c, "ort-cpu", b) for c in ("fp32", "fp16") for b in (1, 2)}
    assert all(r["speedup"] == 1.0 for r in rows if r["candidate"] == "fp32")


def test_fixed_batch_model_with_two_outputs_works_in_every_command(image_folder, tmp_path, capsys):
    from tests.conftest import build_small_cnn

    model = build_small_cnn(tmp_path / "fixed.onnx", batch=1, feature_output=True)
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax", "--samples", "0", "--compare", "--bench-batch-sizes", "1,4",
                 "--task", "classification", "--fail-on", "agreement<0"]) == 0
    document = json.loads((run / "report.json").read_text())
    comparison = document["comparison"]
    assert comparison["images"] == 12 and comparison["reference"]["outputs"] == ["logits", "flat"]
    for candidate in comparison["candidates"]:
        assert [o["tensor"] for o in candidate["outputs"]] == ["logits", "flat"], "every output is compared"
        assert candidate["verdict"]["status"] == "usable"
    assert {row["batch"] for row in document["speed"]} == {1}, "a fixed batch of 1 is timed at 1 only"
    assert set(comparison["profiles"]) == {"int8 minmax"} and comparison["profiles"]["int8 minmax"]["integer"] > 0
    assert "Where the INT8 time goes" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--images", str(image_folder), "--batch-size", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12
    assert main(["bench", "--model", str(model), "--batch-sizes", "1,8", "--backend", "ort-cpu",
                 "--out", str(tmp_path)]) == 0


def test_dynamic_size_model_needs_size(image_folder, tmp_path, capsys):
    from tests.conftest import build_small_cnn

    model = build_small_cnn(tmp_path / "dynamic.onnx", size=None)
    assert main(["eval", "--model", str(model), "--images", str(image_folder)]) == 2
    assert "pass --size HxW" in capsys.readouterr().err
    assert main(["eval", "--model", str(model), "--images", str(image_folder), "--size", "40x48"]) == 0


def minmax_run(model, images, run):
    assert main(["calibrate", "--model", str(model), "--images", str(images), "--out", str(run),
                 "--method", "minmax", "--samples", "0"]) == 0
    return run


@pytest.mark.parametrize("options,message", [
    (["--fail-on", "recall<0.9", "--task", "classification"], "no metric 'recall' for this task"),
    (["--task", "generic", "--accuracy-budget", "1"], "task generic has no accuracy budget"),
])
def test_what_the_task_cannot_measure_is_refused_before_any_inference(small_model, image_folder, tmp_path, capsys,
                                                                      options, message):
    run = minmax_run(small_model, image_folder, tmp_path / "run")
    code = main(["compare", "--model", str(small_model), "--images", str(image_folder), "--candidates", f"int8:{run}",
                 "--out", str(tmp_path / "cmp"), *options])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "report.html").exists()


def test_a_broken_candidate_is_called_unusable_in_words(small_model, tmp_path, capsys):
    from tests.sensitivity.test_ranking import colour_images

    colour_images(tmp_path / "images", count=30)
    image_folder = tmp_path / "images"
    run = minmax_run(small_model, image_folder, tmp_path / "run")
    ranges = json.loads((run / "minmax.json").read_text())
    for entry in ranges["tensors"].values():
        entry["amax"] = entry["amax"] * 1e4  # every activation rounds to zero
    (run / "minmax.json").write_text(json.dumps(ranges))
    for stale in run.glob("minmax.*.onnx"):
        stale.unlink()
    code = main(["compare", "--model", str(small_model), "--images", str(image_folder), "--candidates", f"int8:{run}",
                 "--out", str(tmp_path / "cmp"), "--no-bench", "--fail-on", "agreement<99"])
    err = capsys.readouterr().err
    assert code == 3 and "int8 minmax: UNUSABLE" in err
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "int8 minmax: unusable" in html
    row = html[html.index("int8 minmax</td>"):]
    row = row[: row.index("</tr>")]
    assert 'class="good"' not in row and 'class="bad"' in row, "no number of a broken model is green"
    assert "Speed:" not in html  # --no-bench: no speed note without speed


def test_an_already_quantized_model_is_refused_before_any_image_is_read(small_model, image_folder, tmp_path, capsys):
    run = minmax_run(small_model, image_folder, tmp_path / "run")
    capsys.readouterr()
    out = tmp_path / "again"
    assert main(["calibrate", "--model", str(run / "minmax.qdq.onnx"), "--images", str(tmp_path / "missing"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("calibkit: error:") and "already quantized" in err[0]
    assert "minmax.qdq.onnx" in err[0] and not list(out.glob("*"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(small_model, image_folder, tmp_path, umask, mode):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(small_model), "--images",
                           str(image_folder), "--out", str(run), "--method", "minmax", "--samples", "0"],
                          capture_output=True, text=True, env={**os.environ, "CALIBKIT_QUIET": "1"},
                          preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr
    modes = {path.name: path.stat().st_mode & 0o777 for path in run.iterdir()}
    assert set(modes.values()) == {mode}, modes


@pytest.mark.parametrize("option,fragment", [(["--exclude", "no_such_node"], "--exclude 'no_such_node' matches no node"),
                                             (["--method", "percentile:150"], "percentile")])
def test_bad_options_stop_before_the_statistics_pass(small_model, image_folder, tmp_path, option, fragment):
    run = tmp_path / "run"
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                     "--samples", "0", *option)
    assert_one_line_error(result, fragment)
    assert not (run / "stats.npz").exists() and not list(run.glob("*.json"))


def test_calibration_images_in_the_evaluation_are_named_or_left_out(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax", "--samples", "4"]) == 0
    common = ["compare", "--model", str(small_model), "--images", str(image_folder), "--candidates", f"int8:{run}",
              "--no-bench"]
    assert main(common + ["--out", str(tmp_path / "all")]) == 0
    shared = json.loads((tmp_path / "all" / "report.json").read_text())["comparison"]
    assert shared["images"] == 12 and "4 of the 12 evaluation images were also calibration images" in shared["note"]
    assert main(common + ["--out", str(tmp_path / "held_out"), "--exclude-calibration-images"]) == 0
    held_out = json.loads((tmp_path / "held_out" / "report.json").read_text())["comparison"]
    assert held_out["images"] == 8 and "4 calibration images left out" in held_out["note"]


def test_a_run_s_method_is_named_either_way(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "percentile:99.9,minmax", "--samples", "0"]) == 0
    for spec in ("percentile:99.9", "percentile-99.9"):
        out = tmp_path / spec.replace(":", "_")
        assert main(["compare", "--model", str(small_model), "--images", str(image_folder), "--no-bench",
                     "--candidates", f"int8:{run}:{spec}", "--out", str(out)]) == 0
        names = [c["name"] for c in json.loads((out / "report.json").read_text())["comparison"]["candidates"]]
        assert names == ["int8 percentile-99.9"]


def test_a_run_from_another_model_or_an_unfinished_run_is_refused(small_model, image_folder, tmp_path):
    from tests.conftest import build_small_cnn

    run = minmax_run(small_model, image_folder, tmp_path / "run")
    other = build_small_cnn(tmp_path / "other.onnx", seed=3)
    compare = ["compare", "--images", str(image_folder), "--candidates", f"int8:{run}", "--out", str(tmp_path / "c")]
    assert_one_line_error(run_cli(*compare, "--model", str(other)), "calibrated from a different model")
    assert_one_line_error(run_cli("quantize", "--model", str(other), "--ranges", str(run / "minmax.json"),
                                  "--out", str(tmp_path / "q.onnx")), "ranges calibrated from a different model")
    (run / "summary.json").unlink()
    assert_one_line_error(run_cli(*compare, "--model", str(small_model)), "the calibration did not finish")


def test_an_image_over_pillow_s_limit_and_a_repeated_candidate_get_one_line(small_model, image_folder, tmp_path):
    from PIL import Image

    Image.new("1", (20000, 9000)).save(image_folder / "huge.png")  # 180 MP: over twice Pillow's 89 MP limit
    assert_one_line_error(run_cli("eval", "--model", str(small_model), "--images", str(image_folder)),
                          "huge.png", "safety limit", "--skip-bad")
    skipped = run_cli("eval", "--model", str(small_model), "--images", str(image_folder), "--skip-bad")
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["skipped"] == 1
    (image_folder / "huge.png").unlink()
    assert_one_line_error(run_cli("compare", "--model", str(small_model), "--images", str(image_folder),
                                  "--candidates", "fp16,fp16", "--out", str(tmp_path / "c")), "more than once")


def test_sigterm_stops_a_calibration_and_leaves_the_earlier_run_whole(demo_model, shared_images, small_model,
                                                                     image_folder, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax", "--samples", "0", "--no-engine-check"]) == 0
    earlier = {p.name: p.read_bytes() for p in run.iterdir()}
    process = subprocess.Popen([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(demo_model),
                                "--images", str(shared_images), "--out", str(run), "--samples", "1000",
                                "--method", "minmax"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CALIBKIT_QUIET": "1"})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run.calibkit-staging-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "calibkit: interrupted" in err, err[-500:]
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == earlier, "the earlier run is exactly as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "run"], "no staging folder or lock is left"


def test_a_reused_run_folder_describes_one_run_and_compare_leaves_it_as_it_was(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax,mse", "--samples", "0"]) == 0
    (run / "notes.txt").write_text("the user's own file")
    again = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                    "--method", "entropy2", "--samples", "0")
    assert again.returncode == 0 and "replaced the" in again.stderr and "earlier run" in again.stderr
    assert not list(run.glob("minmax.*")) and not list(run.glob("mse.*")), "no stale method is left beside the new one"
    assert (run / "entropy2.qdq.onnx").is_file() and (run / "notes.txt").read_text() == "the user's own file"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    out = tmp_path / "compare"
    assert main(["compare", "--model", str(small_model), "--images", str(image_folder), "--no-bench", "--candidates",
                 f"int8:{run}", "--exclude", "conv2", "--out", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before, "compare never writes into its input run"
    assert (out / "entropy2.qdq.onnx").is_file()
    assert_one_line_error(run_cli("compare", "--model", str(small_model), "--images", str(image_folder),
                                  "--candidates", f"int8:{run}", "--out", str(run)), "is the run folder being compared")


def test_ranges_naming_tensors_of_another_model_are_refused(small_model, image_folder, tmp_path):
    run = minmax_run(small_model, image_folder, tmp_path / "run")
    document = json.loads((run / "minmax.json").read_text())
    document.pop("provenance", None)
    document["tensors"] = {f"other_{name}": value for name, value in document["tensors"].items()}
    (tmp_path / "foreign.json").write_text(json.dumps(document))
    result = run_cli("quantize", "--model", str(small_model), "--ranges", str(tmp_path / "foreign.json"),
                     "--out", str(tmp_path / "q.onnx"))
    assert_one_line_error(result, "are not in this model", "calibrated on another model")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command", [
    ["calibrate", "--images", "{images}", "--out", "/proc/calibkit_run", "--samples", "0"],
    ["calibrate", "--images", "{images}", "--out", "/proc", "--samples", "0"],
    ["quantize", "--ranges", "{run}/minmax.json", "--out", "/proc/x.onnx"],
    ["bench", "--json", "/proc/x.json", "--batch-sizes", "1"],
    ["compare", "--images", "{images}", "--candidates", "fp16", "--out", "/proc/calibkit_compare"],
])
def test_an_unwritable_output_gets_one_line_before_any_work(small_model, image_folder, tmp_path, command):
    run = minmax_run(small_model, image_folder, tmp_path / "run") if "{run}/minmax.json" in command else None
    filled = [part.format(images=image_folder, run=run) for part in command]
    result = run_cli(filled[0], "--model", str(small_model), *filled[1:])
    assert_one_line_error(result, "/proc", "choose another")
    assert "img/s" not in result.stderr and "p50" not in result.stdout, "nothing ran before the check"


def test_a_write_that_fails_midway_gets_one_line_and_leaves_no_partial_file(small_model, image_folder, tmp_path):
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as a full disk fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # models fit, stats.npz not

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(small_model), "--images",
                             str(image_folder), "--out", str(run), "--method", "minmax", "--samples", "0"],
                            capture_output=True, text=True, env={**os.environ, "CALIBKIT_QUIET": "1"},
                            preexec_fn=limit_file_size)
    assert_one_line_error(result, str(run / "stats.npz"), "cannot be written", "free some space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"], "nothing of the failed run is left"


def test_small_defects_of_the_first_trial_stay_fixed(small_model, image_folder, tmp_path):
    (image_folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    for option, value in (("--trt-version", "-3"), ("--batch-size", "0")):
        result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out",
                         str(tmp_path / "bad"), option, value)
        assert result.returncode == 2 and "must be 1 or more" in result.stderr and "Traceback" not in result.stderr
    run = tmp_path / "run"
    calibrated = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                         "--method", "minmax", "--samples", "0")
    assert calibrated.returncode == 0 and "1 image link(s) point nowhere" in calibrated.stderr, calibrated.stderr
    gated = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                    f"int8:{run}", "--out", str(tmp_path / "c"), "--no-bench", "--task", "classification",
                    "--fail-on-top1-drop", "0.1", "--accuracy-budget", "50")
    assert gated.returncode == 3
    assert "top1-drop>0.1 not checked: top1-drop was not measured" in gated.stderr, gated.stderr
    assert "budget 50.0 agreement points met with 0 layer(s) in float" in gated.stderr
    assert "top-1 drop" not in gated.stderr and not list((tmp_path / "c").glob("*.mixed.*"))


def _stderr_through_a_terminal(*args: str) -> str:
    """Run the CLI with stderr on a pseudo-terminal, as a person at a shell sees it."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    env = {k: v for k, v in os.environ.items() if k != "CALIBKIT_QUIET"}
    done = subprocess.run([sys.executable, "-m", "calibkit.cli", *args], stdout=subprocess.DEVNULL, stderr=follower,
                          env=env)
    os.close(follower)
    reader.join(timeout=30)
    os.close(leader)
    assert done.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_show_on_a_terminal_only_and_calibrate_times_every_stage(small_model, image_folder, tmp_path):
    common = ["calibrate", "--model", str(small_model), "--images", str(image_folder), "--method", "minmax,mse",
              "--samples", "0"]
    on_terminal = _stderr_through_a_terminal(*common, "--out", str(tmp_path / "tty"))
    assert "collecting statistics" in on_terminal and "ranges and Q/DQ exports" in on_terminal
    quiet = _stderr_through_a_terminal(*common, "--out", str(tmp_path / "quiet"), "--quiet")
    assert "collecting statistics" not in quiet and "\r" not in quiet.replace("\r\n", "\n")
    env = {k: v for k, v in os.environ.items() if k != "CALIBKIT_QUIET"}
    logged = subprocess.run([sys.executable, "-m", "calibkit.cli", *common, "--out", str(tmp_path / "log")],
                            capture_output=True, text=True, env=env)
    assert logged.returncode == 0 and "\r" not in logged.stderr and "%|" not in logged.stderr, "no bars in a log"
    stages = [line for line in logged.stderr.splitlines() if line.strip().startswith("stages:")]
    assert len(stages) == 1
    for stage in ("checks", "sampling", "statistics", "ranges", "export"):
        assert f"{stage} " in stages[0], stages[0]
    assert "calibrated on 12 images in" in logged.stderr


def test_help_shows_defaults_and_an_example_and_only_the_options_a_command_uses():
    helps = {name: run_cli(name, "--help").stdout for name in ("eval", "calibrate", "quantize", "bench", "compare", "demo")}
    for name, text in helps.items():
        assert f"example:\n  calibkit {name} " in text, name
        assert "--quiet" in text
    assert "calibrate" in helps["calibrate"] and "(default: 500)" in helps["calibrate"]
    assert "(default: entropy2)" in helps["calibrate"] and "(default: 1,8,32)" in helps["compare"]
    assert "--images" not in helps["bench"] and "--skip-bad" not in helps["bench"] and "--mean" not in helps["bench"]
    assert "--no-accuracy-budget" in helps["demo"] and "(default: 0.5)" in helps["demo"]
    from calibkit.cli import build_parser

    assert build_parser().parse_args(["demo"]).accuracy_budget == 0.5
    assert build_parser().parse_args(["demo", "--no-accuracy-budget"]).accuracy_budget is None


def test_16_bit_and_transparent_images_calibrate_at_their_true_brightness(small_model, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.full((40, 48), 16448, np.uint16)).save(folder / f"depth16_{index}.png")  # 64 in 8 bits
        rgba = np.zeros((40, 48, 4), np.uint8)
        rgba[..., :3] = 64
        Image.fromarray(rgba, "RGBA").save(folder / f"clear_{index}.png")  # alpha 0 everywhere
    run = tmp_path / "run"
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(folder), "--out", str(run),
                     "--method", "minmax", "--samples", "0")
    assert result.returncode == 0, result.stderr
    seen = json.loads((run / "minmax.json").read_text())["tensors"]["input"]
    expected = (64 - 127.5) / 127.5  # the imagenet-tf preset's scaling; white would be +1
    assert abs(seen["min"] - expected) < 0.01 and abs(seen["max"] - expected) < 0.01, seen


def test_the_images_hash_follows_the_pixels(small_model, tmp_path):
    import numpy as np
    from PIL import Image

    hashes = []
    for shade in (40, 200):
        folder = tmp_path / f"shade{shade}"
        folder.mkdir()
        for index in range(3):
            Image.fromarray(np.full((40, 48, 3), shade + index, np.uint8)).save(folder / f"img_{index}.png")
        run = tmp_path / f"run{shade}"
        assert run_cli("calibrate", "--model", str(small_model), "--images", str(folder), "--out", str(run),
                       "--method", "minmax", "--samples", "0").returncode == 0
        hashes.append(json.loads((run / "summary.json").read_text())["images_sha256"])
    assert hashes[0] != hashes[1], "same file names, different pixels: different hashes"


def test_bench_times_every_precision_side_by_side_with_p90_and_a_noise_verdict(small_model, image_folder, tmp_path):
    run = minmax_run(small_model, image_folder, tmp_path / "run")
    rows_path = tmp_path / "bench.json"
    result = run_cli("bench", "--model", str(small_model), "--int8", str(run), "--fp16", "--batch-sizes", "1,8",
                     "--backend", "ort-cpu", "--out", str(tmp_path / "bench"), "--json", str(rows_path))
    assert result.returncode == 0, result.stderr
    rows = json.loads(rows_path.read_text())
    assert {(r["candidate"], r["batch"]) for r in rows} == {(c, b) for c in ("fp32", "int8 minmax", "fp16")
                                                            for b in (1, 8)}
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and isinstance(row["noisy"], bool)
        if row["candidate"] != "fp32":
            assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
    assert "noisy" in result.stdout.splitlines()[0]
    assert "timed on" in result.stderr and "CPUs usable" in result.stderr and "intra-op" in result.stderr


def test_compare_exclusions_add_to_the_runs_own_and_sensitivity_keeps_both_in_float(small_model, image_folder,
                                                                                      tmp_path):
    run, out = tmp_path / "run", tmp_path / "compare"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax", "--samples", "0", "--exclude", "fc"]) == 0
    assert json.loads((run / "summary.json").read_text())["exclude"] == ["fc"]
    assert main(["compare", "--model", str(small_model), "--images", str(image_folder), "--no-bench", "--candidates",
                 f"int8:{run}", "--exclude", "conv2", "--accuracy-budget", "0", "--budget-metric", "agreement",
                 "--out", str(out)]) in (0, 3)
    weight_input = {"conv2": "w2", "fc": "wf"}
    for node in onnx.load(str(out / "minmax.qdq.onnx")).graph.node:
        if node.name in weight_input:
            assert node.input[1] == weight_input[node.name], f"{node.name} must stay float"
    ranked = {r["node"] for r in json.loads((out / "report.json").read_text())["comparison"]["sensitivity"]["ranking"]}
    assert ranked == {"conv1", "conv3"}, "layers kept in float are not ranked"


def test_a_small_memory_budget_runs_the_graph_in_segments_to_the_same_ranges(small_model, image_folder, tmp_path,
                                                                              capsys):
    """Each segment is a graph of its own, so ONNX Runtime may pick another kernel layout for a layer at a
    segment's edge (this model's global pool): the same ranges up to float rounding, not the same bits."""
    argv = ["calibrate", "--model", str(small_model), "--images", str(image_folder), "--method", "minmax,mse",
            "--samples", "0", "--no-engine-check"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    assert main(argv + ["--out", str(tmp_path / "cut"), "--memory-budget", "0.00002"]) == 0
    assert "graph segments (--memory-budget)" in capsys.readouterr().err
    timings = json.loads((tmp_path / "cut" / "timings.json").read_text())
    assert timings["statistics_graph_segments"] > 1 and timings["peak_rss_gb"] > 0
    assert json.loads((tmp_path / "whole" / "timings.json").read_text())["statistics_graph_segments"] == 1
    for label in ("minmax", "mse"):
        whole, cut = (json.loads((tmp_path / run / f"{label}.json").read_text())["tensors"] for run in ("whole", "cut"))
        assert list(whole) == list(cut)
        for name, entry in whole.items():
            assert cut[name]["amax"] == pytest.approx(entry["amax"], rel=1e-5), (label, name)
    assert_one_line_error(run_cli(*argv, "--out", str(tmp_path / "x"), "--memory-budget", "0"),
                          "--memory-budget", "more than 0")


def test_a_budget_metric_the_task_does_not_know_is_refused_before_any_work(small_model, image_folder, tmp_path):
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--method", "minmax",
                     "--out", str(tmp_path / "run"), "--compare", "--accuracy-budget", "1", "--budget-metric", "map")
    assert_one_line_error(result, "unknown budget metric 'map' for task classification", "auto, top1, agreement")
    assert not (tmp_path / "run").exists()
