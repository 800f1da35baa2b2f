"""Run folders as transactions, through the real CLI: an earlier run survives a failed re-run, files
calibkit did not write are never touched, two runs never share a folder, a mixed folder is refused."""

import os
import shutil
import subprocess
import sys

from tests.test_cli import assert_one_line_error, run_cli


def calibrate(model, images, out, *extra):
    return run_cli("calibrate", "--model", str(model), "--images", str(images), "--out", str(out), "--samples", "0",
                   "--method", "minmax", "--no-engine-check", *extra)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_failed_rerun_leaves_the_earlier_run_exactly_as_it_was(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert calibrate(small_model, image_folder, run).returncode == 0
    earlier = snapshot(run)
    (image_folder / "broken.jpg").write_bytes(b"not a picture")
    assert_one_line_error(calibrate(small_model, image_folder, run), "broken.jpg")
    assert snapshot(run) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "run"], "no staging folder or lock is left"


def test_a_folder_of_the_users_files_is_refused_or_written_beside(small_model, image_folder, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "summary.json").write_text('{"my": "own summary"}')
    assert_one_line_error(calibrate(small_model, image_folder, mine), "holds files no calibkit run wrote",
                          "notes.txt", "--force")
    assert snapshot(mine) == {"notes.txt": b"keep me", "summary.json": b'{"my": "own summary"}'}
    assert_one_line_error(calibrate(small_model, image_folder, mine, "--force"), "would overwrite summary.json")
    assert snapshot(mine) == {"notes.txt": b"keep me", "summary.json": b'{"my": "own summary"}'}
    (mine / "summary.json").unlink()
    assert calibrate(small_model, image_folder, mine, "--force").returncode == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "minmax.qdq.onnx").is_file()


def test_an_empty_out_is_refused_and_writes_nothing(small_model, image_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(small_model), "--images",
                           str(image_folder), "--out", "", "--samples", "0"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2 and "--out: expected a folder path, got ''" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_a_second_run_into_a_locked_folder_is_refused_and_a_stale_lock_taken_over(small_model, image_folder,
                                                                                 tmp_path):
    run = tmp_path / "run"
    lock = tmp_path / ".run.calibkit-lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        assert_one_line_error(calibrate(small_model, image_folder, run), f"another calibkit run (PID {sleeper.pid})")
        assert not run.exists() and lock.read_text() == f"{sleeper.pid}\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    done = calibrate(small_model, image_folder, run)
    assert done.returncode == 0 and f"took over the lock of calibkit PID {sleeper.pid}" in done.stderr
    assert not lock.exists()


def test_a_folder_mixing_two_runs_is_refused(small_model, image_folder, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert calibrate(small_model, image_folder, first).returncode == 0
    assert calibrate(small_model, image_folder, second, "--seed", "1", "--sampler", "kmeans",
                     "--exclude", "fc").returncode == 0
    shutil.copy(second / "minmax.json", first / "minmax.json")
    done = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--size", "32",
                   "--candidates", f"int8:{first}", "--out", str(tmp_path / "c"), "--no-bench", "--no-engine-check")
    assert_one_line_error(done, "minmax.json was written by another run", "mixes two calibrations")
    assert os.listdir(first)


def test_a_comparison_holds_its_folder_so_no_second_run_writes_there_meanwhile(small_model, image_folder, tmp_path,
                                                                              monkeypatch):
    """compare exports models and writes its report into --out, and calibrate --compare writes into the run
    folder after the run moved in: both hold the folder's lock while they do."""
    run, out = tmp_path / "run", tmp_path / "cmp"
    assert calibrate(small_model, image_folder, run).returncode == 0
    before = snapshot(run)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".cmp.calibkit-lock").write_text(f"{sleeper.pid}\n")
        refused = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                          f"int8:{run},fp16", "--out", str(out), "--no-bench", "--no-engine-check",
                          "--task", "classification")
        assert_one_line_error(refused, f"{out}: another calibkit run (PID {sleeper.pid}) is writing this folder")
        assert not out.exists(), "nothing exported or reported while another run holds the folder"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert snapshot(run) == before
    import calibkit.cli.commands as commands
    from calibkit.cli import main

    seen = []
    monkeypatch.setattr(commands, "_compare_outputs",
                        lambda *args, **kw: seen.append((tmp_path / ".run.calibkit-lock").is_file()) or 0)
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--samples", "0", "--method", "minmax", "--no-engine-check", "--compare", "--quiet"]) == 0
    assert seen == [True] and not (tmp_path / ".run.calibkit-lock").exists()
