import numpy as np
import onnx
import pytest
from PIL import Image

from calibkit.calib.registry import TensorRange, compute_ranges, get_calibrator
from calibkit.compare.image_cache import ImageCache
from calibkit.compare.sensitivity import fit_accuracy_budget, layer_sensitivity, quantizable_nodes
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.errors import CalibkitError
from calibkit.stats.collect import collect_statistics
from calibkit.workflow import model_task

SPEC = Preprocess(size=(32, 32))


def colour_images(folder, count=60, seed=0):
    """Photos dominated by red, green or blue, so the small model's predictions vary between them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = np.zeros(3)
        colour[index % 3] = 200
        pixels = colour + rng.normal(0, 40, (32, 32, 3)) + rng.uniform(-60, 60, 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"c{index:03d}.png")
    return discover_images(folder)


def cache_of(items, labels=None):
    arrays = np.stack([SPEC(decode_image(i.path)) for i in items])
    if labels is not None:
        items = [ImageItem(i.path, int(label)) for i, label in zip(items, labels)]
    return ImageCache([Batch(arrays[k : k + 16], list(items[k : k + 16]), [(32, 32)] * len(items[k : k + 16]))
                       for k in range(0, len(items), 16)])


@pytest.fixture(scope="module")
def setup(small_model, tmp_path_factory):
    items = colour_images(tmp_path_factory.mktemp("sens"))
    stats = collect_statistics(small_model, items, SPEC, batch_size=8, bins=512)
    ranges = compute_ranges(stats.tensors, get_calibrator("minmax"))
    broken = dict(ranges)
    broken["flat"] = TensorRange(ranges["flat"].amax / 200, 0.0, 0.0)  # the classifier's input, clipped hard
    fp32 = np.concatenate([o["logits"] for _, o in cache_of(items).run(small_model)])
    assert len(set(fp32.argmax(1))) > 1, "test needs varied predictions"
    labelled = cache_of(items, fp32.argmax(1))
    task = model_task(small_model, SPEC, "classification", items=labelled.first.items)
    return broken, labelled, task, items


def test_a_deliberately_broken_layer_ranks_first(small_model, setup):
    broken, cache, task, _ = setup
    ranking = layer_sensitivity(small_model, broken, cache, task)
    assert ranking[0]["node"] == "fc" and ranking[0]["drift_gain"] > 0
    assert {r["node"] for r in ranking} == set(quantizable_nodes(small_model)) == {"conv1", "conv2", "conv3", "fc"}


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


def test_excluded_layers_stay_float_in_every_variant_and_are_not_ranked(small_model, setup, tmp_path):
    broken, cache, task, _ = setup
    rows = layer_sensitivity(small_model, broken, cache, task, exclude=["conv2"])
    assert {r["node"] for r in rows} == {"conv1", "conv3", "fc"}
    result = fit_accuracy_budget(small_model, broken, cache, task, [r["node"] for r in rows], -1000.0,
                                 tmp_path / "kept", max_float=3, exclude=["conv2"])
    assert result.kept_float and "conv2" not in result.kept_float
    graph = onnx.load(result.models["tensorrt"]).graph
    weights = {n.name: n.input[1] for n in graph.node if n.name in ("conv2", *result.kept_float)}
    assert weights["conv2"] == "w2", "the candidate's own exclusion stays in the mixed model"
    assert all(weights[n] == {"conv1": "w1", "conv3": "w3", "fc": "wf"}[n] for n in result.kept_float)
