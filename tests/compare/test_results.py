"""The comparison's typed records and report.json's schema version: what a run writes loads back as the
same records, older files load, newer ones are refused in one line."""

import json
import math

import pytest

from calibkit.compare.results import SCHEMA_VERSION, CandidateResult, Comparison, TensorDrift, load_report
from calibkit.errors import CalibkitError
from calibkit.tasks.verdict import Verdict


@pytest.fixture(scope="module")
def report(small_model, tmp_path_factory):
    from tests.conftest import write_images
    from tests.test_cli import run_cli

    root = tmp_path_factory.mktemp("results")
    write_images(root / "images", 8)
    done = run_cli("compare", "--model", str(small_model), "--images", str(root / "images"), "--candidates", "fp16",
                   "--out", str(root / "c"), "--no-bench", "--no-engine-check", "--task", "classification")
    assert done.returncode == 0, done.stderr
    return root / "c" / "report.json"


def test_a_written_report_loads_as_records_with_its_version(report):
    document = json.loads(report.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    loaded = load_report(report)
    fp16 = loaded.comparison.candidate("fp16")
    assert isinstance(fp16, CandidateResult) and isinstance(fp16.verdict, Verdict)
    assert fp16.verdict.status == document["comparison"]["candidates"][0]["verdict"]["status"]
    assert all(isinstance(d, TensorDrift) for d in fp16.outputs + fp16.layers) and fp16.layers
    assert [m.key for m in loaded.comparison.task.metrics] == [m["key"] for m in document["comparison"]["task"]["metrics"]]


def test_loading_and_writing_again_gives_the_same_json(report, tmp_path):
    from calibkit.report.html import write_report

    loaded = load_report(report)
    _, again = write_report(tmp_path / "again.html", loaded.comparison, loaded.speed, provenance=loaded.provenance,
                            sufficiency=loaded.sufficiency)
    assert again.read_bytes() == report.read_bytes()


def test_infinities_and_not_measured_survive_the_round_trip(report):
    document = json.loads(report.read_text())
    layer = document["comparison"]["candidates"][0]["layers"][0]
    layer["sqnr_db"], layer["cosine"] = "inf", None  # how report.json spells an identical tensor and a NaN
    document["comparison"]["candidates"][0]["metrics"]["top1"] = None
    comparison = Comparison.from_dict(document["comparison"])
    first = comparison.candidates[0]
    assert first.layers[0].sqnr_db == math.inf and math.isnan(first.layers[0].cosine)
    assert first.metrics["top1"] is None, "a metric that was not measured stays not measured"


def test_a_version_1_file_loads_and_a_newer_one_is_refused(report, tmp_path):
    document = json.loads(report.read_text())
    old = dict(document)
    del old["schema_version"]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert load_report(tmp_path / "v1.json").comparison.images == document["comparison"]["images"]
    (tmp_path / "v9.json").write_text(json.dumps({**document, "schema_version": SCHEMA_VERSION + 7}))
    with pytest.raises(CalibkitError, match="v9.json.*newer than this calibkit reads.*upgrade calibkit"):
        load_report(tmp_path / "v9.json")
    (tmp_path / "other.json").write_text(json.dumps({"speed": []}))
    with pytest.raises(CalibkitError, match="other.json: not a calibkit report"):
        load_report(tmp_path / "other.json")


def test_records_read_as_their_json_mapping(report):
    comparison = load_report(report).comparison
    fp16 = comparison.candidates[0]
    assert fp16["metrics"] is fp16.metrics and comparison["candidates"][0] is fp16
    assert comparison.note is None and "note" not in comparison and comparison.get("note", "none") == "none"
    with pytest.raises(KeyError):
        comparison["sensitivity"]
    assert "note" not in comparison.to_dict() and "sensitivity" not in comparison.to_dict()
    assert fp16.to_dict()["calibrator"] is None, "an FP16 candidate says it has no calibrator"
    assert list(comparison.to_dict())[:3] == ["task", "reference", "images"]


def test_a_sensitivity_section_loads_as_its_record_and_writes_back_the_same(report):
    document = json.loads(report.read_text())["comparison"]
    section = {"name": "int8 mse mixed", "calibrator": "mse", "sensitivity_images": 8,
               "ranking": [{"node": "fc", "drift": 0.5, "drift_gain": 0.25}],
               "budget": {"budget": 1.0, "metric": "agreement", "met": True, "kept_float": ["fc"],
                          "steps": [{"float_layers": 0, "loss": 3.0, "metrics": {}}], "models": {"tensorrt": "m.onnx"}},
               "seconds": {"ranking": 1.0, "budget": 2.0}}
    comparison = Comparison.from_dict({**document, "sensitivity": section})
    assert comparison.sensitivity.budget.kept_float == ["fc"] and comparison.sensitivity.budget.met
    assert comparison.to_dict()["sensitivity"] == section


def test_a_field_the_json_spells_as_null_reads_as_none(report):
    document = load_report(report)
    fp16 = document.comparison.candidates[0]
    assert "calibrator" in fp16 and fp16["calibrator"] is None, "as report.json has it: null"
    assert document["sufficiency"] is None and "sufficiency" in document.to_dict()
