import onnx
from onnx import TensorProto, helper

from calibkit.graph.attributes import attribute, attributes
from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import load_model


def _diamond() -> onnx.GraphProto:
    """x -> Relu(a) -> {Sigmoid(b), Neg(c)} -> Add(d) -> y, with the nodes listed out of order and ``a``
    also a graph output."""
    nodes = [
        helper.make_node("Add", ["b", "c"], ["y"], name="add"),
        helper.make_node("Sigmoid", ["a"], ["b"], name="sigmoid"),
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Neg", ["a"], ["c"], name="neg"),
        helper.make_node("Conv", ["x", "w", ""], ["z"], name="conv", group=4, strides=[2, 2], auto_pad="VALID"),
    ]
    value = helper.make_tensor_value_info
    return helper.make_graph(nodes, "diamond", [value("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                             [value("y", TensorProto.FLOAT, None), value("a", TensorProto.FLOAT, None),
                              value("z", TensorProto.FLOAT, None)],
                             [helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 1, 1], [1.0] * 4)])


def test_producers_and_readers():
    index = GraphIndex(_diamond())
    assert index.producer["b"].name == "sigmoid" and index.producer_op("a") == "Relu"
    assert index.producer_op("x") is None and index.producer_op("w") is None, "graph inputs and weights have none"
    assert [n.name for n in index.consumers["a"]] == ["sigmoid", "neg"], "readers in node order"
    assert "" not in index.consumers and "" not in index.position, "an omitted optional input is not a tensor"
    assert index.only_reader("b").name == "add"
    assert index.only_reader("a") is None, "two readers"
    assert index.only_reader("y") is None, "a graph output is read by the user as well"


def test_topological_order_is_stable_and_complete():
    order = [n.name for n in GraphIndex(_diamond()).topological()]
    assert order == ["relu", "conv", "sigmoid", "neg", "add"]


def test_upstream_stops_at_nodes_already_taken():
    index = GraphIndex(_diamond())
    names = lambda found: sorted(index.nodes[i].name for i in found)  # noqa: E731
    assert names(index.upstream(["y"])) == ["add", "neg", "relu", "sigmoid"]
    taken = {index.position["a"]}
    assert names(index.upstream(["y"], within=taken)) == ["add", "neg", "sigmoid"]


def test_index_is_a_snapshot_of_the_graph_it_was_built_on():
    graph = _diamond()
    index = GraphIndex(graph)
    assert index.producer_op("b") == "Sigmoid"
    graph.node[1].op_type = "Tanh"  # the same message: attribute reads see the edit
    graph.node.pop()
    assert len(index.nodes) == 5 and len(GraphIndex(graph).nodes) == 4, "a new index for the edited graph"


def test_attributes_with_onnx_defaults():
    conv = _diamond().node[4]
    relu = _diamond().node[2]
    assert attribute(conv, "group", 1) == 4 and attribute(relu, "group", 1) == 1
    assert attributes(conv) == {"group": 4, "strides": (2, 2), "auto_pad": "VALID"}


def test_real_model_every_input_is_produced_or_given(demo_model):
    model = load_model(demo_model)
    index = GraphIndex(model.graph)
    given = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    assert all(name in index.produced or name in given for node in model.graph.node for name in node.input if name)
    order = index.topological()
    assert len(order) == len(model.graph.node)
    seen = set(given)
    for node in order:
        assert all(not name or name in seen for name in node.input), node.name
        seen.update(node.output)
