import numpy as np
import onnx
import pytest
from PIL import Image

from calibkit.calib.registry import TensorRange, compute_ranges, get_calibrator
from calibkit.compare.sensitivity import ImageCache, fit_accuracy_budget, layer_sensitivity, loss, quantizable_nodes
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.stats.collect import collect_statistics

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


@pytest.fixture(scope="module")
def setup(small_model, tmp_path_factory):
    items = colour_images(tmp_path_factory.mktemp("sens"))
    stats = collect_statistics(small_model, items, SPEC, batch_size=8, bins=512)
    ranges = compute_ranges(stats.tensors, get_calibrator("minmax"))
    broken = dict(ranges)
    broken["flat"] = TensorRange(ranges["flat"].amax / 200, 0.0, 0.0)  # the classifier's input, clipped hard
    arrays = np.stack([SPEC(decode_image(i.path)) for i in items])
    fp32 = ImageCache(arrays, None).logits(small_model)
    assert len(set(fp32.argmax(1))) > 1, "test needs varied predictions"
    return broken, ImageCache(arrays, fp32.argmax(1))


def test_a_deliberately_broken_layer_ranks_first(small_model, setup):
    broken, cache = setup
    ranking = layer_sensitivity(small_model, broken, cache)
    assert ranking[0]["node"] == "fc" and ranking[0]["kl_gain"] > 0
    assert {r["node"] for r in ranking} == set(quantizable_nodes(small_model)) == {"conv1", "conv2", "conv3", "fc"}


def test_budget_keeps_the_fewest_layers_in_float(small_model, setup, tmp_path):
    broken, cache = setup
    ranking = [r["node"] for r in layer_sensitivity(small_model, broken, cache)]
    loose = fit_accuracy_budget(small_model, broken, cache, ranking, 100.0, tmp_path / "loose")
    assert loose.met and loose.kept_float == [] and len(loose.steps) == 1
    strict = fit_accuracy_budget(small_model, broken, cache, ranking, 0.0, tmp_path / "strict")
    assert strict.steps[0]["loss"] > 0, "the broken range must cost accuracy"
    assert strict.met and strict.kept_float[0] == "fc" and strict.steps[-1]["loss"] <= 0.0
    assert all(step["loss"] > 0 for step in strict.steps[:-1]), "stopped at the first k within budget"
    assert len(strict.kept_float) == len(strict.steps) - 1
    graph = onnx.load(strict.models["tensorrt"]).graph
    fc = next(n for n in graph.node if n.name == "fc")
    assert fc.input[1] == "wf", "fc should keep float weights"


def test_loss_uses_labels_when_present():
    reference = np.eye(4)
    candidate = np.eye(4)[[0, 1, 3, 2]]
    assert loss(reference, candidate, None) == pytest.approx(50.0)
    assert loss(reference, candidate, np.array([0, 1, 3, 3])) == pytest.approx(0.0)


def test_budget_metric_agreement_ignores_labels_and_top1_needs_them(small_model, setup, tmp_path):
    broken, cache = setup
    result = fit_accuracy_budget(small_model, broken, cache, ["fc"], 100.0, tmp_path / "a", metric="agreement")
    assert result.metric == "agreement" and "top1" in result.steps[0], "top-1 is still reported beside"
    from calibkit.errors import CalibkitError

    with pytest.raises(CalibkitError, match="needs labelled images"):
        fit_accuracy_budget(small_model, broken, ImageCache(cache.arrays, None), ["fc"], 1.0, tmp_path / "b",
                            metric="top1")
