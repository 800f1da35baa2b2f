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
