import pickle

import numpy as np
import pytest

from calibkit.backends.onnxruntime import OrtSession
from calibkit.data.image_cache import ImageCache
from calibkit.data.loader import iter_batches
from calibkit.sensitivity.budget import fit_accuracy_budget
from calibkit.sensitivity.ranking import layer_sensitivity
from tests.sensitivity.test_ranking import SPEC, setup  # noqa: F401  (the fixture: colour photos, broken ranges)


@pytest.fixture(scope="module")
def decoded(setup):
    _, labelled, _, _ = setup
    return list(labelled)


def spilling(batches, limit):
    """A cache decoding ``batches`` that holds only ``limit`` bytes of them in memory."""
    return ImageCache(decode=lambda: iter(batches), in_memory_bytes=limit)


def test_batches_past_the_memory_limit_go_to_disk_and_come_back_identical(decoded):
    cache = spilling(decoded, decoded[0].array.nbytes)
    assert cache.spilled == len(decoded) - 1
    for _ in range(2):  # every pass reads the same batches, in order
        for got, want in zip(cache, decoded, strict=True):
            np.testing.assert_array_equal(got.array, want.array)
            assert got.items == want.items and got.sizes == want.sizes
    copied = pickle.loads(pickle.dumps(cache))  # what a Ray task receives: every batch, in full
    assert copied.spilled == 0
    assert all(np.array_equal(a.array, b.array) for a, b in zip(copied, decoded, strict=True))


def test_a_pass_yields_each_batch_with_its_outputs(small_model, decoded):
    session = OrtSession(small_model, ["CPUExecutionProvider"])
    for batch, outputs in spilling(decoded, 0).run(small_model):
        np.testing.assert_array_equal(outputs["logits"], session.run(batch.array)["logits"])


def test_the_budget_search_gives_the_same_steps_from_disk(small_model, setup, decoded, tmp_path):
    broken, held, task, _ = setup
    ranking = [r["node"] for r in layer_sensitivity(small_model, broken, held, task)]
    in_memory = fit_accuracy_budget(small_model, broken, held, task, ranking, 0.0, tmp_path / "a")
    on_disk = spilling(decoded, 0)
    from_disk = fit_accuracy_budget(small_model, broken, on_disk, task, ranking, 0.0, tmp_path / "b")
    assert on_disk.spilled == len(decoded)
    assert from_disk.steps == in_memory.steps and from_disk.kept_float == in_memory.kept_float
    assert layer_sensitivity(small_model, broken, on_disk, task) == layer_sensitivity(small_model, broken, held, task)


def test_decoding_happens_once_however_many_passes(small_model, setup):
    _, _, _, items = setup
    calls = []

    def decode():
        calls.append(1)
        yield from iter_batches(items, SPEC, 16)

    cache = ImageCache(decode=decode, in_memory_bytes=0)
    for _ in range(3):
        assert sum(len(batch.items) for batch in cache) == len(items)
    assert calls == [1]


def test_outputs_past_the_memory_bound_go_to_disk_and_read_back_in_order():
    import numpy as np

    from calibkit.data.image_cache import OutputCache

    rng = np.random.default_rng(0)
    batches = [{"boxes": rng.standard_normal((2, 5)).astype(np.float32), "count": np.array([index])}
               for index in range(4)]
    cache = OutputCache(in_memory_bytes=2 * sum(v.nbytes for v in batches[0].values()))
    for outputs in batches:
        cache.append(outputs)
    assert sum(isinstance(entry, dict) for entry in cache._entries) == 2, "the first two stay in RAM"
    for got, expected in zip(cache, batches, strict=True):
        assert list(got) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
