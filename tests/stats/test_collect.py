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
