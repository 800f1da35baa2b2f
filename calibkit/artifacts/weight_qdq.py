"""Per-channel INT8 weights for ONNX Runtime's quantizer, computed on whole arrays.

ONNX Runtime's ``QDQQuantizer`` derives each per-channel weight scale, then quantizes the weight, one
output channel at a time in Python: on EfficientNet-Lite0 (22 000 channels) that was 0.9 s of every
1.4 s export, and a run writes two exports per calibrator. The same arithmetic on whole arrays:

* :func:`weight_overrides` gives the quantizer every weighted layer's scales and zero points as its
  public ``TensorQuantOverrides``, so it computes none;
* with ``AddQDQPairToWeight`` the quantizer then leaves ``weight -> QuantizeLinear -> DequantizeLinear``,
  and :func:`fold_weight_quantizers` replaces each such ``QuantizeLinear`` by the INT8 initializer it
  computes, named as the quantizer names its own.

Both follow ``onnxruntime.quantization.quant_utils`` (``compute_scale_zp`` and ``quantize_nparray``)
operation for operation, so the model written is the one the quantizer writes alone; a test holds them
to it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.graph.attributes import attribute
from calibkit.graph.onnx_model import drop_unused_initializers
from calibkit.stats.moments import weighted_layers

QUANTIZED_SUFFIX = "_quantized"  # the quantizer's own name for a quantized initializer


def channel_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric INT8 scales along ``axis``: ``max|w| / 127`` over each channel (the range always holds
    0), divided in float64 and stored as float32; 1.0 for a channel whose scale would be below float32's
    smallest normal number."""
    channels = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    low = np.minimum(channels.min(axis=1), np.float32(0))
    high = np.maximum(channels.max(axis=1), np.float32(0))
    absmax = np.maximum(np.abs(low), np.abs(high))
    scale = (absmax.astype(np.float64) + absmax.astype(np.float64)) / 254.0
    return np.where(scale < np.finfo(np.float32).tiny, 1.0, scale).astype(np.float32)


def weight_overrides(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """``TensorQuantOverrides`` with the per-channel scales of every weighted layer of ``model``
    (:func:`calibkit.stats.moments.weighted_layers`, whose axes are the quantizer's)."""
    initializers = {init.name: init for init in model.graph.initializer}
    overrides: dict[str, list[dict]] = {}
    for layer in weighted_layers(model):
        if layer.weight in overrides or layer.weight not in initializers:
            continue
        scales = channel_scales(numpy_helper.to_array(initializers[layer.weight]), layer.axis)
        overrides[layer.weight] = [{"axis": layer.axis, "scale": scale, "zero_point": np.int8(0)} for scale in scales]
    return overrides


def quantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """``round(values / scale) + zero_point`` in float32, clipped to the zero point's integer type, with
    ``scale`` and ``zero_point`` per channel along ``axis`` (or one each)."""
    shape = [1] * values.ndim
    if axis is not None and scale.ndim:
        shape[axis] = -1
    info = np.iinfo(zero_point.dtype)
    levels = (values.astype(np.float32) / scale.reshape(shape)).round() + zero_point.reshape(shape)
    return np.clip(levels, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace every ``QuantizeLinear`` of a constant (scale and zero point constant too) by the integer
    initializer it computes; drop the float constants nothing reads any more. Returns how many."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    folded: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if (node.op_type != "QuantizeLinear" or len(node.input) < 3
                or any(name not in initializers for name in node.input[:3])):
            kept.append(node)
            continue
        values, scale, zero_point = (numpy_helper.to_array(initializers[name]) for name in node.input[:3])
        axis = attribute(node, "axis", 1)
        name = node.input[0] + QUANTIZED_SUFFIX
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(
                quantize(values, scale, zero_point, axis % values.ndim if values.ndim else None), name)
            graph.initializer.append(initializers[name])
        folded[node.output[0]] = name
    for node in kept:
        for index, name in enumerate(node.input):
            if name in folded:
                node.input[index] = folded[name]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    return len(folded)
