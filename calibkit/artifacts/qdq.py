"""Explicit-quantization (Q/DQ) ONNX from a model and calibrated ranges, placed for TensorRT.

ONNX Runtime's ``QDQQuantizer`` does the graph surgery on the model's normalised graph
(:mod:`calibkit.graph.normalize`); calibkit feeds it its own ranges as a symmetric MinMax table, so no
calibration runs inside ONNX Runtime, and its per-channel weight scales, applied on whole arrays
(:mod:`calibkit.artifacts.weight_qdq`). Which ops get INT8 inputs is the rule table of
:mod:`calibkit.artifacts.placement`. Per target:

* ``tensorrt`` (the artefact to ship): symmetric INT8, zero point 0, activation scale = amax / 127,
  per-channel weights; inputs only, biases in float (TensorRT quantizes bias itself and its guidance is
  not to feed INT32 bias DQ). Accuracy is measured on this graph.
* ``onnxruntime`` (for CPU speed): the same pairs plus the outputs of the quantized ops and INT32
  biases, so ONNX Runtime's CPU provider fuses each DQ-op-Q group into a real integer kernel
  (``QLinearConv``, ``QLinearMatMul``, ...); see :mod:`calibkit.artifacts.qdq_placement`.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from calibkit.artifacts.placement import nodes_kept_float, quantized_op_types
from calibkit.artifacts.qdq_placement import fold_activation_qdq, fuse_residual_adds
from calibkit.artifacts.weight_levels import write_weight_levels
from calibkit.artifacts.weight_qdq import fold_weight_quantizers, weight_overrides
from calibkit.calib.registry import TensorRange
from calibkit.calib.weights import RefinedWeights
from calibkit.errors import CalibkitError
from calibkit.artifacts.verify import verify_model
from calibkit.fileio import atomic_path
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import with_inferred_shapes

TARGETS = ("tensorrt", "onnxruntime")


def resolve_exclusions(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Node names matched by ``patterns`` (exact names, shell globs on names, or op types)."""
    patterns = [p for p in patterns if p]
    matched: list[str] = []
    for pattern in patterns:
        hits = [
            node.name for node in model.graph.node
            if node.name == pattern or fnmatch.fnmatchcase(node.name, pattern) or node.op_type == pattern
        ]
        if not hits:
            raise CalibkitError(f"--exclude {pattern!r} matches no node name or op type of the model")
        matched.extend(hits)
    return list(dict.fromkeys(matched))


def check_ranges_fit(model: onnx.ModelProto, ranges: Mapping[str, TensorRange], model_path: Path) -> None:
    """Refuse ranges naming tensors the model does not have: they were calibrated on another graph, and
    quantizing with them would silently leave the model in float."""
    names = {t for node in model.graph.node for t in node.output} | {i.name for i in model.graph.input}
    unknown = [name for name in ranges if name not in names]
    if unknown:
        raise CalibkitError(f"{model_path}: {len(unknown)} of the {len(ranges)} calibrated tensors are not in this "
                            f"model (e.g. {', '.join(unknown[:3])}); the ranges were calibrated on another model")


def export_qdq(
    model_path: Path,
    ranges: Mapping[str, TensorRange],
    out: Path,
    exclude: Iterable[str] = (),
    target: str = "tensorrt",
    keep_activations: bool = False,
    weights: RefinedWeights | None = None,
) -> Path:
    """Write a Q/DQ model of ``model_path``'s normalised graph (:mod:`calibkit.graph.normalize`, whose tensor
    names ``ranges`` uses) for ``target`` to ``out`` atomically, once it passes
    :func:`~calibkit.artifacts.verify.verify_model`. ``weights`` (the run's rounded weights and corrected
    biases, :mod:`calibkit.calib.weights`) replace the quantizer's round-to-nearest ones."""
    if target not in TARGETS:
        raise CalibkitError(f"unknown Q/DQ target {target!r}; use one of {TARGETS}")
    model = with_inferred_shapes(normalized_model(Path(model_path)).model)
    check_ranges_fit(model, ranges, model_path)
    quantized = _quantized(model, ranges, exclude, target, keep_activations)
    if weights is not None:
        write_weight_levels(quantized, weights)
    fold_activation_qdq(quantized, target)
    if target == "tensorrt":
        fuse_residual_adds(quantized)
    with atomic_path(Path(out)) as tmp:
        onnx.save(quantized, str(tmp))
        del quantized, model
        verify_model(tmp, Path(out))
    return Path(out)


def _quantized(model: onnx.ModelProto, ranges: Mapping[str, TensorRange], exclude: Iterable[str], target: str,
               keep_activations: bool) -> onnx.ModelProto:
    """ONNX Runtime's QDQ quantizer run on ``model`` with calibkit's ranges, symmetric INT8 per-channel
    weights and the placement rules (:mod:`calibkit.artifacts.placement`); the weights' Q/DQ pairs folded
    to stored INT8 initializers."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    table = TensorsData(
        CalibrationMethod.MinMax,
        {name: TensorData(lowest=np.float32(-r.amax), highest=np.float32(r.amax)) for name, r in ranges.items()},
    )
    quantizer = QDQQuantizer(
        model,
        True,
        False,
        QuantType.QInt8,
        QuantType.QInt8,
        table,
        [],
        list(dict.fromkeys(resolve_exclusions(model, exclude) + nodes_kept_float(model))),
        quantized_op_types(),
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": target == "onnxruntime",
            "QDQKeepRemovableActivations": keep_activations,
            "OpTypesToExcludeOutputQuantization": quantized_op_types() if target == "tensorrt" else [],
            "TensorQuantOverrides": weight_overrides(model),
            "AddQDQPairToWeight": True,
        },
    )
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantizer.quantize_model()
    finally:
        logging.getLogger().setLevel(previous)
    quantized = quantizer.model.model
    fold_weight_quantizers(quantized)
    quantizer.model.topological_sort()
    return quantized
