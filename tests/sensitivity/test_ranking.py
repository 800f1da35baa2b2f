import numpy as np
import onnx
import pytest
from PIL import Image

from calibkit.calib.registry import TensorRange, compute_ranges, get_calibrator
from calibkit.data.image_cache import ImageCache
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.sensitivity.budget import fit_accuracy_budget
from calibkit.sensitivity.ranking import layer_sensitivity, quantizable_nodes
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
