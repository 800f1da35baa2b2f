"""The HTML report: one colour per method in every chart, rules a reader can apply, calibration
sections also for a standalone ``compare`` of a run folder, and provenance a person can act on."""

import json
import re

from calibkit.cli import main
from calibkit.report.html import SUFFICIENT_CHANGE_PCT, _sufficiency_chart
from calibkit.report.svg import method_colours


def _colour_of(html: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, html))


def test_a_standalone_compare_shows_the_run_and_keeps_each_method_s_colour(small_model, image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax,mse", "--samples", "0", "--quiet"]) == 0
    out = tmp_path / "compare"
    assert main(["compare", "--model", str(small_model), "--images", str(image_folder), "--no-bench", "--quiet",
                 "--candidates", f"int8:{run},fp16", "--out", str(out), "--fail-on", "agreement<100.5",
                 "--task", "classification"]) == 3
    html = (out / "report.html").read_text()
    assert "Histograms of the worst layers" in html, "the run's statistics are shown without recalibrating"
    colours = method_colours(["minmax", "mse", "fp16"])
    for method in ("minmax", "mse"):
        colour = colours[method]
        assert f'<span class="swatch" style="background:{colour}"></span>int8 {method}' in html
        assert f'stroke="{colour}" stroke-width="1.5"><title>{method}: amax' in html, "histogram threshold in the method's colour"
        assert f'<polyline points="' in html and f'stroke="{colour}" stroke-width="1.5"/>' in html
    assert html.count('<svg viewBox="0 0 900 170"') == 3, "one drift chart per candidate"
    assert html.count('<td class="bad">') >= 3, "agreement cells meeting the gate are marked"
    provenance = json.loads((out / "report.json").read_text())["provenance"]
    for row in ("image folder", "calibkit version", "onnxruntime version", "numpy version", "CPU", "threads",
                "command line", "date (UTC)", "calibration timings (s)"):
        assert provenance.get(row), row
    assert provenance["image folder"] == str(image_folder.resolve())


def test_the_sufficiency_chart_is_zero_based_log_spaced_with_its_rule():
    rows = [{"images": n, "mean_change_pct": change, "spread_pct": 0.1, "p90_change_pct": change}
            for n, change in ((50, 6.0), (100, 3.0), (200, 1.5), (400, 0.5))]
    svg = _sufficiency_chart({"methods": {"mse": rows}}, {"mse": "#123456"})
    xs = [float(x) for x in re.findall(r'<circle cx="([0-9.]+)"', svg)]
    assert abs((xs[1] - xs[0]) - (xs[2] - xs[1])) < 0.2 and abs((xs[3] - xs[2]) - (xs[2] - xs[1])) < 0.2
    ticks = [float(t) for t in re.findall(r'text-anchor="end">(-?[0-9.e+-]+)</text>', svg)]
    assert min(ticks) == 0.0, "the y axis starts at zero"
    assert f"{SUFFICIENT_CHANGE_PCT:g} %: settled" in svg and 'stroke-dasharray' in svg
    assert 'stroke="#123456"' in svg


def _png(data: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def test_a_detection_report_names_classes_colours_boxes_marks_layers_and_recommends(tmp_path):
    """Through the CLI on a YOLOv8-layout detector whose metadata names its classes."""
    import html as html_module

    import numpy as np
    from PIL import ImageColor

    from calibkit.colours import REFERENCE
    from tests.conftest import build_tiny_yolov8, write_images
    from tests.test_cli import run_cli

    model = build_tiny_yolov8(tmp_path / "yolo.onnx", names=("text", "table", "figure"))
    write_images(tmp_path / "pages", 12)
    run = tmp_path / "run"
    done = run_cli("calibrate", "--model", str(model), "--images", str(tmp_path / "pages"), "--out", str(run),
                   "--samples", "0", "--method", "minmax,entropy2", "--compare", "--task", "detection",
                   "--preset", "yolo", "--no-engine-check")
    assert done.returncode == 0, done.stderr
    page = (run / "report.html").read_text(encoding="utf-8")
    document = json.loads((run / "report.json").read_text(encoding="utf-8"))
    candidates = {c["name"]: c for c in document["comparison"]["candidates"]}
    for name in ("int8 minmax", "int8 entropy2"):
        assert {row["class"] for row in candidates[name]["details"]["per_class"]} <= {"text", "table", "figure"}
    assert ">text</td>" in page and ">figure</td>" in page, "class names from the model's metadata"

    colours = method_colours([c["calibrator"] or c["name"] for c in document["comparison"]["candidates"]])
    for name, colour in colours.items():
        assert f'<span class="swatch" style="background:{colour}"></span>' in page, "the table's colours are these"
    figures = re.findall(r'<h3>(int8 \w+): where it disagrees with FP32 most</h3>\n<figure class="example"><img '
                         r'alt="[^"]*candidate (\d+) \(right[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert any(int(boxes) for _, boxes, _ in figures), "candidates that disagree show examples with their boxes"
    for name, boxes, data in figures:
        pixels = np.asarray(_png(data))
        half = pixels.shape[1] // 2
        own = np.array(ImageColor.getrgb(colours[name.split()[1]]))
        assert (pixels[:, half:] == own).all(axis=2).any() == bool(int(boxes)), f"{name}'s boxes in its colour"
        assert (pixels[:, :half] == np.array(ImageColor.getrgb(REFERENCE))).all(axis=2).any(), "FP32 in black"
        assert not (pixels[:, :half] == own).all(axis=2).any()

    charts = re.findall(r'<svg viewBox="0 0 900 170".*?</svg>', page, flags=re.S)
    assert len(charts) == 3
    for chart in charts:
        assert re.search(r'<text[^>]*class="mark">[^<]+</text>', chart), "the lowest layers are named"
        assert re.search(r'y2="[0-9.]+" stroke="#999"/><text [^>]*>0</text>', chart), "the layer axis has ticks"

    recommendation = document["comparison"]["recommendation"]
    usable = [c for c in candidates.values() if c["verdict"]["status"] == "usable" and c["precision"] == "int8"]
    best = max(usable, key=lambda c: c["metrics"]["f1"])["name"]
    assert recommendation.startswith(f"Recommendation: {best}, the most accurate usable INT8"), recommendation
    assert recommendation in html_module.unescape(page) and recommendation in done.stderr
    assert 'class="bad" title="rounds disagree' not in page, "noise is not marked as unusable"


def test_noisy_speed_cells_get_their_own_mark_not_the_unusable_red(small_model, image_folder, tmp_path):
    from tests.test_cli import run_cli

    out = tmp_path / "c"
    done = run_cli("compare", "--model", str(small_model), "--images", str(image_folder), "--candidates", "fp16",
                   "--out", str(out), "--no-bench", "--no-engine-check", "--task", "classification")
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "report.json").read_text())
    from calibkit.report.html import write_report

    rows = [{"candidate": name, "precision": precision, "backend": "ort-cpu", "batch": 1, "p50_ms": 1.0,
             "speedup": 1.0, "speedup_low": 0.7, "speedup_high": 1.3, "noisy": True}
            for name, precision in (("fp32", "fp32"), ("fp16", "fp16"))]
    write_report(out / "again.html", document["comparison"], rows)
    page = (out / "again.html").read_text()
    assert page.count('<td class="noisy" title="rounds disagree') == 2 and "≈ noisy" in page
    assert 'class="bad" title="rounds disagree' not in page


def test_calibration_provenance_keeps_seconds_apart_from_memory(small_model, image_folder, tmp_path):
    from calibkit import workflow
    from calibkit.data.preprocess import Preprocess
    from calibkit.workflow.sections import calibration_sections

    run = workflow.calibrate(small_model, image_folder, tmp_path / "run", methods="minmax", samples=0,
                             preprocess=Preprocess(size=(32, 32)))
    _, rows = calibration_sections(run, [])
    assert set(json.loads(rows["calibration timings (s)"])) >= {"statistics_s", "total_s"}
    assert all(key.endswith("_s") for key in json.loads(rows["calibration timings (s)"]))
    assert float(rows["calibration peak RSS (GB)"]) > 0 and rows["calibration graph segments"] == "1"
