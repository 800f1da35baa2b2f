"""compare_and_report: what is on disk while a separate per-layer pass runs, and its time budget."""

import json

from calibkit import workflow
from calibkit.compare.run import Candidate
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from tests.compare.test_layers import _quantized_small_model

SPEC = Preprocess(size=(32, 32))


def test_the_comparison_is_on_disk_before_a_separate_per_layer_pass_which_stops_at_its_time_budget(
        small_model, image_folder, tmp_path, monkeypatch):
    import calibkit.compare.run as run
    from calibkit.compare.layers import InlineLayerDrift

    items = discover_images(image_folder)
    quantized = _quantized_small_model(small_model, items, tmp_path, SPEC)
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    report.write_text("an earlier report", encoding="utf-8")
    partial = workflow.partial_report(report)
    monkeypatch.setattr(InlineLayerDrift, "fits", staticmethod(lambda plan: False))
    on_disk = {}
    real_pass = run.layer_drift

    def reading_the_report_first(*args, **kwargs):
        on_disk["json"] = json.loads(partial.with_suffix(".json").read_text(encoding="utf-8"))
        on_disk["html"] = partial.read_text(encoding="utf-8")
        on_disk["earlier"] = report.read_text(encoding="utf-8")
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(run, "layer_drift", reading_the_report_first)
    task = workflow.model_task(small_model, SPEC, "classification", items=items)
    result = workflow.compare_and_report(small_model, items, SPEC, [Candidate("int8", "int8", quantized, quantized)],
                                         report, task, batch_sizes=[], layer_images=6, layer_seconds=1e-6)
    first = on_disk["json"]["comparison"]
    assert first["layers_pending"] == 6 and first["images"] == len(items)
    assert first["candidates"][0]["verdict"]["status"] and not first["candidates"][0]["layers"]
    assert "per-layer drift on 6 images not in this report: that pass started after it was written" in on_disk["html"]
    assert on_disk["earlier"] == "an earlier report", "the earlier report stays whole until the new one is complete"
    final = result["comparison"]
    assert final["layer_images"] == 1 and "layers_pending" not in final and final["candidates"][0]["layers"]
    assert "after 1 of 6 images" in final["layer_note"]
    assert any("time budget" in warning for warning in final["warnings"]), "what the terminal warns, the report says"
    written = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))["comparison"]
    assert written["layer_images"] == 1 and "stopped at its" in report.read_text(encoding="utf-8")
    assert not partial.exists() and not partial.with_suffix(".json").exists()
