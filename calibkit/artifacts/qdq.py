"""Explicit-quantization (Q/DQ) ONNX from a model and calibrated ranges, placed for TensorRT.

ONNX Runtime's ``QDQQuantizer`` does the graph surgery; calibkit feeds it its own ranges as a
symmetric MinMax table, so no calibration runs inside ONNX Runtime. Placement:

* symmetric INT8 everywhere, zero point 0; activation scale = amax / 127 from the calibrator;
* per-channel symmetric INT8 weights on Conv, ConvTranspose, Gemm and MatMul;
* Q/DQ on the inputs of Conv/Gemm/MatMul, pooling and Concat, and on both inputs of Add, so a
  residual Add fuses into the preceding convolution in TensorRT;
* ``target="tensorrt"`` keeps biases in float (TensorRT quantizes bias itself and its guidance
  is not to feed INT32 bias DQ); ``target="onnxruntime"`` quantizes bias to INT32 so ONNX Runtime's
  CPU provider fuses each DQ-Conv-Q group into a real integer ``QLinearConv``.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from calibkit.artifacts.qdq_placement import fold_activation_qdq
from calibkit.calib.registry import TensorRange
from calibkit.errors import CalibkitError
from calibkit.fileio import atomic_path

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool",
                 "MaxPool", "Concat")
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


# Per-channel DequantizeLinear (axis) and integer Clip, which the ONNX Runtime target runs, need opset 13.
MIN_QDQ_OPSET = 13


def export_qdq(
    model_path: Path,
    ranges: Mapping[str, TensorRange],
    out: Path,
    exclude: Iterable[str] = (),
    target: str = "tensorrt",
    keep_activations: bool = False,
) -> Path:
    """Write a Q/DQ model for ``target`` to ``out`` (atomically) and check it with onnx.checker."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    if target not in TARGETS:
        raise CalibkitError(f"unknown Q/DQ target {target!r}; use one of {TARGETS}")
    model = _at_least_opset(load_model_with_shape_infer(Path(model_path)), MIN_QDQ_OPSET)
    _clean_inferred_copy(Path(model_path))
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
        resolve_exclusions(model, exclude),
        list(QUANTIZED_OPS),
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": target == "onnxruntime",
            "QDQKeepRemovableActivations": keep_activations,
        },
    )
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantizer.quantize_model()
    finally:
        logging.getLogger().setLevel(previous)
    quantizer.model.topological_sort()
    quantized = quantizer.model.model
    fold_activation_qdq(quantized, target)
    onnx.checker.check_model(quantized)
    with atomic_path(Path(out)) as tmp:
        onnx.save(quantized, str(tmp))
    return Path(out)


def _at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to ``opset`` of the default domain when it is older (outputs unchanged)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    from onnx import version_converter

    try:
        return onnx.shape_inference.infer_shapes(version_converter.convert_version(model, opset))
    except Exception as exc:
        raise CalibkitError(f"model opset {current} cannot be converted to {opset}, which per-channel Q/DQ "
                            f"needs ({type(exc).__name__}); re-export the model with opset >= {opset}") from exc


def _clean_inferred_copy(model_path: Path) -> None:
    """ONNX Runtime's loader leaves ``<name>-inferred.onnx`` beside the model; remove it."""
    model_path.with_name(f"{model_path.stem}-inferred{model_path.suffix}").unlink(missing_ok=True)
