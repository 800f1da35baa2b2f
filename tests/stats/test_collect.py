import json

import numpy as np
import pytest

from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.backends.onnxruntime import OrtSession
from calibkit.errors import CalibkitError
from calibkit.stats.collect import CollectedStats, collect_statistics


def test_one_pass_matches_direct_activations_and_round_trips(small_model, image_folder, tmp_path):
    items = discover_images(image_folder)
    spec = Preprocess(size=(32, 32))
    stats = collect_statistics(small_model, items, spec, batch_size=5, bins=256)
    assert list(stats.tensors)[0] == "input" and "sum" in stats.tensors
    assert stats.provenance["num_images"] == len(items)

    session = OrtSession(small_model, ["CPUExecutionProvider"], expose=["c2"])
    batch = np.stack([spec(decode_image(i.path)) for i in items])
    c2 = session.run(batch, ["c2"])["c2"]
    assert stats.tensors["c2"].min == np.float32(c2.min()) and stats.tensors["c2"].max == np.float32(c2.max())
    assert stats.tensors["c2"].count == c2.size

    path = stats.save(tmp_path / "stats.npz")
    loaded = CollectedStats.load(path)
    assert list(loaded.tensors) == list(stats.tensors)
    np.testing.assert_array_equal(loaded.tensors["c2"].signed, stats.tensors["c2"].signed)
    assert loaded.tensors["r1"].zeros == stats.tensors["r1"].zeros > 0
    assert loaded.tensors["c2"].upper == stats.tensors["c2"].upper
    assert loaded.provenance == stats.provenance


def test_statistics_of_an_older_layout_are_refused_with_a_fix(small_model, image_folder, tmp_path):
    stats = collect_statistics(small_model, discover_images(image_folder), Preprocess(size=(32, 32)), bins=64)
    path = stats.save(tmp_path / "stats.npz")
    with np.load(path) as data:
        arrays = dict(data)
    meta = json.loads(arrays["meta"].tobytes())
    del meta["format"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(CalibkitError, match="calibrate again"):
        CollectedStats.load(tmp_path / "old.npz")


def test_moments_folded_beside_the_pass_equal_moments_folded_image_by_image(small_model, image_folder):
    """The pass feeds the layer-input moments on a thread of their own; they must be those of the first
    images, in order, as a collector fed directly (to float rounding: the pass's session exposes more
    tensors, which changes ONNX Runtime's fusions)."""
    from calibkit.graph.normalize import normalized_model
    from calibkit.stats.moments import MomentCollector, weighted_layers

    items = discover_images(image_folder)
    spec = Preprocess(size=(32, 32))
    layers = weighted_layers(normalized_model(small_model).model)
    in_pass = MomentCollector(layers, images=4, min_samples_per_column=1, seed=3)
    collect_statistics(small_model, items, spec, batch_size=1, bins=256, moments=in_pass)
    direct = MomentCollector(layers, images=4, min_samples_per_column=1, seed=3)
    session = OrtSession(small_model, ["CPUExecutionProvider"], expose=direct.inputs)
    for item in items[:6]:
        direct.update(session.run(spec(decode_image(item.path))[None], direct.inputs))
    assert in_pass.seen == direct.seen == 4
    for layer in layers:
        ours, theirs = in_pass.moments[layer.node], direct.moments[layer.node]
        np.testing.assert_allclose(ours.mean, theirs.mean, rtol=1e-6, atol=1e-9)
        assert (ours.second is None) == (theirs.second is None)
        if ours.second is not None:
            np.testing.assert_allclose(ours.second, theirs.second, rtol=1e-6, atol=1e-9)


def test_a_failing_moment_update_stops_the_pass():
    from calibkit.stats.collect import Ordered

    seen = []

    def record(value):
        if value == 3:
            raise ValueError("bad update")
        seen.append(value)

    with pytest.raises(ValueError, match="bad update"):
        with Ordered(2) as calls:
            for value in range(6):
                calls.submit(record, value)
    assert seen[:3] == [0, 1, 2] and 3 not in seen


def test_the_memory_budget_covers_the_weights_before_the_tensors(small_model):
    import onnx

    from calibkit.stats.collect import tensor_bytes

    model = onnx.load(str(small_model))
    weights = sum(init.ByteSize() for init in model.graph.initializer)
    assert tensor_bytes(model, 10 * weights) == 9 * weights
    assert tensor_bytes(model, weights) == weights // 4, "weights past the budget still leave segments some room"
