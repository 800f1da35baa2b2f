import numpy as np
import onnx
import pytest

from calibkit.artifacts.placement import quantized_nodes
from calibkit.artifacts.qdq import export_qdq
from calibkit.artifacts.qdq_edit import with_node_in_float
from calibkit.backends.onnxruntime import OrtSession
from calibkit.calib.registry import compute_ranges, get_calibrator
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.graph.normalize import normalized_model
from calibkit.sensitivity.ranking import quantizable_nodes
from calibkit.sensitivity.suffix import Base, SuffixRunner, suffix_groups, suffix_of
from calibkit.stats.collect import collect_statistics
from tests.conftest import build_small_cnn, write_images

SPEC = Preprocess(size=(32, 32))


@pytest.fixture(scope="module", params=["batch", 2], ids=["free-batch", "fixed-batch-2"])
def quantized(request, tmp_path_factory):
    """The small CNN (with its pooled features as a second output) quantized for TensorRT, its float graph
    and five images: a fixed batch of 2 leaves a padded last chunk."""
    folder = tmp_path_factory.mktemp("suffix")
    model = build_small_cnn(folder / "m.onnx", batch=request.param, feature_output=True)
    write_images(folder / "images", 6)
    items = discover_images(folder / "images")
    ranges = compute_ranges(collect_statistics(model, items, SPEC, batch_size=1, bins=256).tensors,
                            get_calibrator("minmax"))
    path = export_qdq(model, ranges, folder / "m.qdq.onnx")
    images = np.stack([SPEC(decode_image(item.path)) for item in items[:5]])
    return model, path, onnx.load(str(path)), images


def test_every_variant_run_from_its_suffix_gives_the_whole_variants_outputs(quantized):
    model, path, graph, images = quantized
    float_model = normalized_model(model).model
    names = quantized_nodes(float_model)
    base = Base.of(graph)
    variants = {node: with_node_in_float(graph, float_model, node, names) for node in quantizable_nodes(model)}
    runner = SuffixRunner(base, path, {node: suffix_of(base, v) for node, v in variants.items()})
    got = dict(runner.run(images))
    for node, variant in variants.items():
        whole = OrtSession(path, ["CPUExecutionProvider"], model=variant, qdq_as_written=True).run(images)
        assert set(got[node]) == set(whole) == {"logits", "flat"}
        for name in whole:
            np.testing.assert_allclose(got[node][name], whole[name], rtol=1e-5, atol=1e-6)
    fc = runner.suffixes["fc"]
    assert fc.reused == ["flat"] and [o.name for o in fc.model.graph.output] == ["logits"], \
        "an output the change cannot reach is the base's"


def test_a_suffix_computes_its_own_weights_and_reads_only_activations_from_the_base(quantized):
    model, _, graph, _ = quantized
    float_model = normalized_model(model).model
    variant = with_node_in_float(graph, float_model, "conv2", quantized_nodes(float_model))
    suffix = suffix_of(Base.of(graph), variant)
    producers = {out: node for node in graph.graph.node for out in node.output}
    initializers = {init.name for init in graph.graph.initializer}
    for name in suffix.inputs:
        producer = producers.get(name)
        assert producer is None or not all(i in initializers for i in producer.input if i), name
    kept = {node.name for node in suffix.model.graph.node}
    assert {"conv2", "conv3", "fc"} <= kept and "conv1" not in kept


def test_groups_keep_the_order_and_stay_within_their_budgets(quantized):
    model, _, graph, _ = quantized
    float_model = normalized_model(model).model
    names, base = quantized_nodes(float_model), Base.of(graph)
    nodes = quantizable_nodes(model)

    def make(node):
        return suffix_of(base, with_node_in_float(graph, float_model, node, names))

    sizes = {name: 1000 for name in base.types}
    assert [list(g) for g in suffix_groups(nodes, make, sizes, 1)] == [nodes]
    assert [list(g) for g in suffix_groups(nodes, make, sizes, 1, most=3)] == [nodes[:3], nodes[3:]]
    assert [list(g) for g in suffix_groups(nodes, make, sizes, 1, exposed_bytes=1)] == [[n] for n in nodes]
    assert [list(g) for g in suffix_groups(nodes, make, sizes, 1, weight_bytes=1)] == [[n] for n in nodes]
