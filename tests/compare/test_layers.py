import math

import numpy as np
import pytest

from calibkit.compare.layers import LayerDrift


def test_streamed_metrics_equal_whole_array_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 40)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32)
    drift = LayerDrift("t")
    for r, c in zip(ref, cand):
        drift.update(r, c)
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    assert drift.sqnr_db == pytest.approx(10 * math.log10((r64**2).sum() / ((c64 - r64) ** 2).sum()), rel=1e-5)
    assert drift.cosine == pytest.approx((r64 * c64).sum() / np.linalg.norm(r64) / np.linalg.norm(c64), rel=1e-6)
    assert drift.max_abs_error == pytest.approx(np.abs(c64 - r64).max(), rel=1e-6)
    assert drift.max_rel_error == pytest.approx(np.abs(c64 - r64).max() / np.abs(r64).max(), rel=1e-6)


def test_identical_tensors_have_infinite_sqnr():
    drift = LayerDrift("t")
    drift.update(np.ones(4, np.float32), np.ones(4, np.float32))
    assert drift.sqnr_db == math.inf and drift.cosine == pytest.approx(1.0)


def test_non_finite_candidate_values_are_counted_and_the_rest_scored():
    ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    cand = np.array([1.0, np.nan, 3.5, np.inf], np.float32)
    drift = LayerDrift("t")
    drift.update(ref, cand)
    assert drift.nonfinite == 2
    assert drift.noise == pytest.approx(2.0**2 + 0.5**2 + 4.0**2)
    assert drift.max_abs_error == pytest.approx(4.0)


def test_c_kernel_and_numpy_path_give_the_same_sums(monkeypatch):
    import calibkit.compare.layers as layers

    if layers._drift is None:
        pytest.skip("the C drift kernel was not built (no compiler); only the NumPy path is in use")
    rng = np.random.default_rng(4)
    ref = rng.standard_normal(100_003).astype(np.float32) * 3  # an odd length: the kernel's scalar tail
    cand = ref + rng.standard_normal(ref.size).astype(np.float32) * 0.05
    cand[[7, 50_000, 100_002]] = [np.nan, np.inf, -np.inf]
    c_sums = layers.candidate_sums(ref, cand)
    monkeypatch.setattr(layers, "_drift", None)
    numpy_sums = layers.candidate_sums(ref, cand)
    assert c_sums[3:] == numpy_sums[3:] and c_sums[4] == 3  # largest |difference| and the count: exact
    assert c_sums[:3] == pytest.approx(numpy_sums[:3], rel=1e-5)
    r64, c64 = ref.astype(np.float64), np.where(np.isfinite(cand), cand, 0).astype(np.float64)
    assert c_sums[:3] == pytest.approx((((c64 - r64) ** 2).sum(), (r64 * c64).sum(), (c64**2).sum()), rel=1e-9)


def _quantized_small_model(small_model, items, tmp_path, spec):
    from calibkit.artifacts.qdq import export_qdq
    from calibkit.calib.registry import compute_ranges, get_calibrator
    from calibkit.stats.collect import collect_statistics

    ranges = compute_ranges(collect_statistics(small_model, items, spec, batch_size=4).tensors, get_calibrator("minmax"))
    return export_qdq(small_model, ranges, tmp_path / "q.onnx")


def test_the_pass_in_graph_segments_equals_one_segment_and_runs_each_model_once_per_image(
        small_model, image_folder, tmp_path, monkeypatch):
    import calibkit.compare.layers as layers
    from calibkit.data.images import discover_images
    from calibkit.data.preprocess import Preprocess
    from calibkit.stats.segments import SegmentedSession

    spec = Preprocess(size=(32, 32))
    items = discover_images(image_folder)[:5]
    quantized = _quantized_small_model(small_model, items, tmp_path, spec)
    models = {"int8": quantized, "again": quantized}
    plan = layers.plan_layers(small_model, models, spec)
    counted = {"runs": 0, "segments": []}
    real_run, real_split = SegmentedSession.run, layers.split

    def counting_run(self, batch):
        counted["runs"] += 1
        return real_run(self, batch)

    def counting_split(*args, **kwargs):
        counted["segments"].append(len(found := real_split(*args, **kwargs)))
        return found

    monkeypatch.setattr(SegmentedSession, "run", counting_run)
    monkeypatch.setattr(layers, "split", counting_split)
    whole, images = layers.layer_drift(small_model, models, items, spec, plan, budget_bytes=1 << 40)
    assert images == 5 and counted == {"runs": 15, "segments": [1]}
    counted.update(runs=0, segments=[])
    smallest = min(plan.sizes.values())
    cut, images = layers.layer_drift(small_model, models, items, spec, plan, budget_bytes=2 * smallest)
    assert images == 5 and counted["runs"] == 15, "every model still runs once per image"
    assert counted["segments"][0] >= 4, "a budget of two small tensors cuts the graph"
    for name in models:
        assert [d.name for d in cut[name]] == [d.name for d in whole[name]] and len(cut[name]) >= 8
        for a, b in zip(cut[name], whole[name]):
            assert a.count == b.count > 0, a.name
            assert a.sqnr_db == pytest.approx(b.sqnr_db, rel=1e-4, abs=1e-3), a.name
            assert a.max_abs_error == pytest.approx(b.max_abs_error, rel=1e-4, abs=1e-6), a.name


def test_a_candidates_segments_mirror_the_references(small_model, image_folder, tmp_path):
    from calibkit.data.images import discover_images
    from calibkit.data.preprocess import Preprocess
    from calibkit.graph.onnx_model import load_model
    from calibkit.stats.segments import split, split_like

    spec = Preprocess(size=(32, 32))
    quantized = _quantized_small_model(small_model, discover_images(image_folder)[:4], tmp_path, spec)
    from calibkit.compare.layers import plan_layers

    plan = plan_layers(small_model, {"int8": quantized}, spec)
    reference = split(load_model(small_model), list(plan.sizes), plan.sizes, 2 * min(plan.sizes.values()))
    groups = [segment.exposed for segment in reference]
    mirrored = split_like(load_model(quantized), plan.shared["int8"], groups)
    assert [set(s.exposed) for s in mirrored[:len(groups)]] == [set(g) for g in groups]
    assert not any(s.exposed for s in mirrored[len(groups):]), "what no group needs comes last, exposing nothing"
    total = sum(len(s.model.graph.node) for s in mirrored)
    assert total == len(load_model(quantized).graph.node), "every node runs in exactly one segment"


def test_no_image_starts_after_the_deadline_but_one_always_runs(small_model, image_folder, tmp_path):
    import time

    import calibkit.compare.layers as layers
    from calibkit.data.images import discover_images
    from calibkit.data.preprocess import Preprocess

    spec = Preprocess(size=(32, 32))
    items = discover_images(image_folder)[:4]
    quantized = _quantized_small_model(small_model, items, tmp_path, spec)
    plan = layers.plan_layers(small_model, {"int8": quantized}, spec)
    drifts, images = layers.layer_drift(small_model, {"int8": quantized}, items, spec, plan,
                                        deadline=time.time() - 1)
    assert images == 1 and all(d.count for d in drifts["int8"])


def test_a_tensor_never_scored_is_left_out_with_a_warning_not_shown_as_identical():
    import numpy as np

    from calibkit.compare.layers import LayerDrift, scored

    seen, missed = LayerDrift("seen"), LayerDrift("missed")
    seen.update(np.ones(4, np.float32), np.full(4, 1.1, np.float32))
    with pytest.warns(UserWarning, match="int8: 1 tensor\\(s\\) were never scored .*missed"):
        kept = scored("int8", [seen, missed])
    assert [d.name for d in kept] == ["seen"] and np.isfinite(kept[0].sqnr_db)
