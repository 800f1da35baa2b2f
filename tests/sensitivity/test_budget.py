import onnx
import pytest

from calibkit.data.image_cache import ImageCache
from calibkit.errors import CalibkitError
from calibkit.sensitivity.budget import fit_accuracy_budget
from calibkit.sensitivity.ranking import layer_sensitivity
from calibkit.workflow import model_task
from tests.sensitivity.test_ranking import SPEC, cache_of, setup  # noqa: F401  (the fixture: colour photos, broken ranges)


def test_budget_keeps_the_fewest_layers_in_float(small_model, setup, tmp_path):
    broken, cache, task, _ = setup
    ranking = [r["node"] for r in layer_sensitivity(small_model, broken, cache, task)]
    loose = fit_accuracy_budget(small_model, broken, cache, task, ranking, 100.0, tmp_path / "loose")
    assert loose.met and loose.kept_float == [] and len(loose.steps) == 1
    assert loose.models == {} and not list(tmp_path.glob("loose*")), "no mixed model when no layer stays float"
    strict = fit_accuracy_budget(small_model, broken, cache, task, ranking, 0.0, tmp_path / "strict")
    assert strict.metric == "top1", "labels present: the budget limits the top-1 drop"
    assert strict.steps[0]["loss"] > 0, "the broken range must cost accuracy"
    assert strict.met and strict.kept_float[0] == "fc" and strict.steps[-1]["loss"] <= 0.0
    assert all(step["loss"] > 0 for step in strict.steps[:-1]), "stopped at the first k within budget"
    assert len(strict.kept_float) == len(strict.steps) - 1
    graph = onnx.load(strict.models["tensorrt"]).graph
    fc = next(n for n in graph.node if n.name == "fc")
    assert fc.input[1] == "wf", "fc should keep float weights"


def test_budget_metric_agreement_ignores_labels_and_top1_needs_them(small_model, setup, tmp_path):
    broken, cache, task, items = setup
    result = fit_accuracy_budget(small_model, broken, cache, task, ["fc"], 100.0, tmp_path / "a", metric="agreement")
    assert result.metric == "agreement" and result.steps[0]["metrics"]["top1"] is not None, "top-1 still reported"
    unlabelled = model_task(small_model, SPEC, "classification", items=items)
    with pytest.raises(CalibkitError, match="needs labelled images"):
        fit_accuracy_budget(small_model, broken, cache_of(items), unlabelled, ["fc"], 1.0, tmp_path / "b",
                            metric="top1")


def test_an_unknown_budget_metric_is_refused(small_model, setup, tmp_path):
    broken, cache, task, _ = setup
    with pytest.raises(CalibkitError, match="unknown budget metric 'f1'"):
        fit_accuracy_budget(small_model, broken, cache, task, ["fc"], 1.0, tmp_path / "c", metric="f1")


def test_the_comparisons_measurement_is_step_zero_and_a_met_budget_decodes_nothing(small_model, setup, tmp_path):
    broken, cache, task, _ = setup
    ranking = [r["node"] for r in layer_sensitivity(small_model, broken, cache, task)]
    fitted = fit_accuracy_budget(small_model, broken, cache, task, ranking, 0.0, tmp_path / "fit")
    measured = fitted.steps[0]["metrics"]

    def never() -> list:
        raise AssertionError("a budget the comparison shows met must not decode images")

    met = fit_accuracy_budget(small_model, broken, ImageCache(decode=never), task, ranking, 100.0, tmp_path / "met",
                              measured=measured)
    assert met.met and met.kept_float == [] and len(met.steps) == 1 and met.steps[0]["metrics"] == measured
    resumed = fit_accuracy_budget(small_model, broken, cache, task, ranking, 0.0, tmp_path / "resumed",
                                  measured=measured)
    assert resumed.kept_float == fitted.kept_float
    assert [s["loss"] for s in resumed.steps] == [s["loss"] for s in fitted.steps]


def test_an_unreachable_budget_keeps_the_step_that_came_closest(small_model, setup, tmp_path):
    broken, cache, task, _ = setup
    ranking = [r["node"] for r in layer_sensitivity(small_model, broken, cache, task)]
    result = fit_accuracy_budget(small_model, broken, cache, task, ranking, -1000.0, tmp_path / "never", max_float=3)
    assert not result.met and [s["float_layers"] for s in result.steps] == [0, 1, 2, 3]
    closest = min(result.steps, key=lambda s: (s["loss"], s["float_layers"]))
    assert result.kept_float == ranking[: closest["float_layers"]]
    assert closest["loss"] < result.steps[0]["loss"], "the broken fc in float must come closer than all INT8"
    assert set(result.models) == {"tensorrt", "onnxruntime"}
