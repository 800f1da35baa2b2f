"""A run's refined weights land in both Q/DQ targets: its levels, its corrected biases, nothing else."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from calibkit.artifacts.placement import quantized_nodes
from calibkit.artifacts.qdq import export_qdq
from calibkit.artifacts.qdq_edit import with_node_in_float
from calibkit.artifacts.weight_levels import CORRECTED
from calibkit.data.images import discover_images
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.graph.normalize import normalized_model
from calibkit.workflow import calibrate, run_weights

SPEC = Preprocess(size=(32, 32))


@pytest.fixture(scope="module")
def run(small_model, tmp_path_factory):
    from tests.conftest import write_images

    folder = tmp_path_factory.mktemp("calib")
    write_images(folder, 16, seed=5)
    out = tmp_path_factory.mktemp("run")
    done = calibrate(small_model, folder, out, methods="mse", samples=0, preprocess=SPEC)
    return done, folder


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_tensorrt_target_carries_the_levels_and_corrected_float_biases(small_model, run, tmp_path):
    done, _ = run
    weights = run_weights(done.out)
    assert weights.layers["conv2"].levels is not None  # 72 columns, 16 images x 32 positions: GPTQ
    model = onnx.load(str(export_qdq(small_model, done.ranges["mse"], tmp_path / "q.onnx", weights=weights)))
    inits = _inits(model)
    conv2 = _node(model, "conv2")
    np.testing.assert_array_equal(inits[f"{weights.layers['conv2'].weight}_quantized"], weights.layers["conv2"].levels)
    assert conv2.input[2] == "b2" + CORRECTED
    np.testing.assert_array_equal(inits["b2" + CORRECTED], weights.layers["conv2"].corrected_bias)
    assert "b2" in inits or all("b2" not in n.input for n in model.graph.node)
    plain = _inits(onnx.load(str(export_qdq(small_model, done.ranges["mse"], tmp_path / "p.onnx"))))
    assert not np.array_equal(plain["w2_quantized"], inits["w2_quantized"])  # GPTQ moved some levels
    assert np.abs(plain["w2_quantized"].astype(int) - inits["w2_quantized"]).max() <= 2


def test_onnxruntime_target_requantizes_its_int32_bias(small_model, run, tmp_path):
    done, _ = run
    weights = run_weights(done.out)
    model = onnx.load(str(export_qdq(small_model, done.ranges["mse"], tmp_path / "q.onnx", target="onnxruntime",
                                     weights=weights)))
    inits = _inits(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    bias = producers[_node(model, "conv2").input[2]]
    assert bias.op_type == "DequantizeLinear" and inits[bias.input[0]].dtype == np.int32
    expected = np.round(weights.layers["conv2"].corrected_bias / inits[bias.input[1]])
    np.testing.assert_array_equal(inits[bias.input[0]], expected)


def test_refined_int8_model_is_closer_to_fp32_on_its_calibration_images(small_model, run, tmp_path):
    done, folder = run
    batch = np.concatenate([b.array for b in iter_batches(discover_images(folder), SPEC, 16)])

    def logits(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": batch})[0]

    reference = logits(small_model)
    plain = export_qdq(small_model, done.ranges["mse"], tmp_path / "p.onnx")
    refined = export_qdq(small_model, done.ranges["mse"], tmp_path / "r.onnx", weights=run_weights(done.out))
    assert np.mean((logits(refined) - reference) ** 2) < np.mean((logits(plain) - reference) ** 2)


def test_excluded_and_float_again_nodes_keep_their_own_weights_and_bias(small_model, run, tmp_path):
    done, _ = run
    weights = run_weights(done.out)
    excluded = onnx.load(str(export_qdq(small_model, done.ranges["mse"], tmp_path / "x.onnx", exclude=["conv2"],
                                        weights=weights)))
    assert list(_node(excluded, "conv2").input[1:]) == ["w2", "b2"]
    quantized = onnx.load(str(export_qdq(small_model, done.ranges["mse"], tmp_path / "q.onnx", weights=weights)))
    float_model = normalized_model(small_model).model
    edited = with_node_in_float(quantized, float_model, "conv2", quantized_nodes(float_model))
    assert list(_node(edited, "conv2").input[1:]) == ["w2", "b2"]
    np.testing.assert_array_equal(_inits(edited)["b2"], _inits(float_model)["b2"])
