import numpy as np

from calibkit.data.images import discover_images
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import activation_bytes, float_activations
from calibkit.stats.collect import collect_part
from calibkit.stats.moments import MomentCollector, weighted_layers
from calibkit.stats.segments import cut_points, split
from calibkit.workflow import model_preprocess


def test_segments_fit_the_budget_and_cover_every_tensor_once(demo_model):
    model = normalized_model(demo_model).model
    names = float_activations(model)
    sizes = activation_bytes(model, (1, 3, 224, 224))
    budget = 4 << 20
    segments = split(model, names, sizes, budget)
    assert len(segments) > 5
    exposed = [name for segment in segments for name in segment.exposed]
    assert sorted(exposed) == sorted(names), "the input and each node's tensor are exposed by exactly one segment"
    assert all(s.exposed_bytes <= budget or len(s.model.graph.node) == 1 for s in segments), \
        "only a single node over the budget gets a segment over it"
    for index, segment in enumerate(segments):
        made_before = {n for s in segments[:index] for n in s.carried}
        assert set(segment.inputs) <= made_before | {model.graph.input[0].name}, "inputs come from earlier segments"
    assert cut_points(model, names, sizes, 1 << 40) == [0], "a budget that fits gives one segment"


def test_a_pass_in_segments_gives_the_same_statistics_and_moments_to_the_bit(demo_model, shared_images):
    items = discover_images(shared_images)[:3]
    spec = model_preprocess(demo_model)
    layers = weighted_layers(normalized_model(demo_model).model)

    def run(budget, streams=False):
        moments = MomentCollector(layers, images=2, min_samples_per_column=1, seed=5)
        if streams:
            moments.use_layer_streams()
        part = collect_part(demo_model, items, spec, bins=512, moments=moments, memory_budget=budget)
        return part, moments

    whole, whole_moments = run(1 << 40, streams=True)  # layers in graph order, each from its own stream
    cut, cut_moments = run(8 << 20)  # layers as segments hand them over: the pass chooses layer streams
    assert whole.segments == 1 and cut.segments > 5
    assert list(cut.shards[0]) == list(whole.shards[0])
    for name, stats in whole.shards[0].items():
        other = cut.shards[0][name]
        assert (stats.min, stats.max, stats.count, stats.zeros) == (other.min, other.max, other.count, other.zeros), name
        np.testing.assert_array_equal(stats.signed, other.signed, err_msg=name)
    assert whole_moments.seen == cut_moments.seen == 2
    assert set(whole_moments.moments) == set(cut_moments.moments) == {layer.node for layer in layers}
    for node, moment in whole_moments.moments.items():
        np.testing.assert_array_equal(moment.mean, cut_moments.moments[node].mean, err_msg=node)
        if moment.second is not None:
            np.testing.assert_array_equal(moment.second, cut_moments.moments[node].second, err_msg=node)


def test_segments_loaded_as_they_run_give_the_same_tensors_and_hold_no_session(small_model):
    from calibkit.stats.segments import SegmentedSession

    model = normalized_model(small_model).model
    names = float_activations(model)
    sizes = activation_bytes(model, (1, 3, 32, 32))
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    held = SegmentedSession(small_model, split(model, names, sizes, 1), resident=True)
    loaded = SegmentedSession(small_model, split(model, names, sizes, 1), resident=False)
    assert len(held.segments) > 3
    assert all(hasattr(s, "run_feeds") for s in held.sessions) and not any(hasattr(s, "run_feeds") for s in loaded.sessions)
    for mine, theirs in zip(loaded.run(image), held.run(image), strict=True):
        assert mine.keys() == theirs.keys()
        for name in mine:
            np.testing.assert_array_equal(mine[name], theirs[name])
