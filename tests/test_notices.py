"""Every warning the terminal prints is in the run's summary.json and in the report too."""

import html
import json

from tests.test_cli import run_cli


def test_one_calibration_image_warns_and_every_warning_reaches_the_report(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    done = run_cli("calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                   "--samples", "1", "--method", "entropy2,minmax", "--compare", "--no-engine-check",
                   "--no-bench")
    assert done.returncode == 0, done.stderr
    printed = [line.removeprefix("calibkit: warning: ") for line in done.stderr.splitlines()
               if line.startswith("calibkit: warning: ")]
    assert any("calibrating on 1 image(s)" in line for line in printed)
    assert any("sufficiency check skipped" in line for line in printed)
    report = html.unescape((run / "report.html").read_text(encoding="utf-8"))
    assert all(line in report for line in printed), [line for line in printed if line not in report]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert any("calibrating on 1 image(s)" in line for line in summary["warnings"])

    again = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                    f"int8:{run}", "--out", str(tmp_path / "cmp"), "--no-engine-check", "--no-bench")
    assert again.returncode == 0, again.stderr
    later = html.unescape((tmp_path / "cmp" / "report.html").read_text(encoding="utf-8"))
    assert all(line in later for line in summary["warnings"]), "a later compare shows what the calibration warned"
