import numpy as np
import pytest

from calibkit.backends.onnxruntime import OrtSession
from calibkit.calib import compute_ranges
from calibkit.calib.entropy import entropy_divergences
from calibkit.calib.registry import get_calibrator
from calibkit.data.images import discover_images
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.graph.onnx_model import float_activations, load_model
from calibkit.stats.clamps import Clamp, derivable_clamps
from calibkit.stats.collect import collect_statistics

SPEC = Preprocess(size=(32, 32))


def test_relu6_nodes_of_the_small_model_are_derivable(small_model):
    model = load_model(small_model)
    clamps = derivable_clamps(model, float_activations(model))
    assert clamps == [Clamp("r1", "c1", 0.0, 6.0), Clamp("r2", "c2", 0.0, 6.0)]
    assert derivable_clamps(model, ["r1", "r2"]) == []


@pytest.fixture
def both_ways(small_model, image_folder):
    items = discover_images(image_folder)
    derived = collect_statistics(small_model, items, SPEC, batch_size=4)
    direct = collect_statistics(small_model, items, SPEC, batch_size=4, tensors=["r1", "r2"])
    session = OrtSession(small_model, ["CPUExecutionProvider"], expose=["r1", "r2"])
    values = {"r1": [], "r2": []}
    for batch in iter_batches(items, SPEC, 4):
        for name, array in session.run(batch.array, ["r1", "r2"]).items():
            values[name].append(array.ravel())
    return derived, direct, {name: np.concatenate(parts) for name, parts in values.items()}


def test_derived_statistics_are_those_of_the_values(both_ways):
    derived, direct, values = both_ways
    assert derived.provenance["tensors_from_clamped_inputs"] == 2
    assert direct.provenance["tensors_from_clamped_inputs"] == 0
    for name, y in values.items():
        ours, theirs = derived.tensors[name], direct.tensors[name]
        assert (ours.count, ours.min, ours.max) == (theirs.count, float(y.min()), float(y.max()))
        assert ours.zeros == int((y == 0).sum())
        assert compute_ranges({name: ours}, get_calibrator("minmax"))[name].amax == float(np.abs(y).max())
        pct = compute_ranges({name: ours}, get_calibrator("percentile:99.9"))[name].amax
        assert pct == pytest.approx(np.percentile(y, 99.9), abs=2 * ours.upper / ours.bins)


def test_derived_entropy_is_near_optimal_on_tensorrts_own_histogram(both_ways):
    # On small data the KL curve is flat near its minimum, so compare divergences, not thresholds.
    derived, _, values = both_ways
    for name, y in values.items():
        amax = float(np.abs(y).max())
        exact, _ = np.histogram(np.abs(y), bins=2048, range=(0.0, amax))
        exact = exact.astype(np.float64)
        exact[0] = exact[1]
        divergences = entropy_divergences(exact)
        got = compute_ranges({name: derived.tensors[name]}, get_calibrator("entropy2"))[name].amax
        chosen = int(round(got / amax * 2048))
        assert divergences[chosen - 128] <= 1.01 * divergences.min(), name
