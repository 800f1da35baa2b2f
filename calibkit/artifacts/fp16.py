"""FP16 ONNX for TensorRT 11's strongly typed networks: FP16 weights and compute, FP32 graph I/O.

Uses ONNX Runtime's maintained converter (``onnxruntime.transformers.float16``). Kept in FP32,
besides that converter's own block list (NMS, TopK, Range, CumSum, Min/Max, ...): the ops whose
FP16 range or accumulation is a known accuracy risk, listed in :data:`FP32_OPS`, and every node that
reads a constant beyond FP16's largest finite value (which the converter would clamp to 65504).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.artifacts.verify import verify_model
from calibkit.fileio import atomic_path
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import with_inferred_shapes

FP16_MAX = 65504.0

FP32_OPS = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf",
            "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL2", "ReduceLogSumExp",
            "LayerNormalization", "InstanceNormalization", "GroupNormalization")


def export_fp16(model_path: Path, out: Path) -> Path:
    """Write the FP16 cast of ``model_path``'s normalised graph (:mod:`calibkit.graph.normalize`) to ``out``
    atomically, once it passes :func:`~calibkit.artifacts.verify.verify_model`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = with_inferred_shapes(normalized_model(Path(model_path)).model)
    converted = convert_float_to_float16(  # converted in place, the shapes inferred already (no weight copy)
        model, keep_io_types=True, disable_shape_infer=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
        node_block_list=nodes_with_out_of_range_constants(model),
    )
    OnnxModel(converted).topological_sort()
    del model  # the same graph, converted in place
    with atomic_path(Path(out)) as tmp:
        onnx.save(converted, str(tmp))
        del converted
        verify_model(tmp, Path(out))
    return Path(out)


def nodes_with_out_of_range_constants(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes reading a float initializer with a magnitude FP16 cannot hold."""
    too_large = set()
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            values = numpy_helper.to_array(init)
            if values.size and float(np.abs(values).max()) > FP16_MAX:
                too_large.add(init.name)
    return [node.name for node in model.graph.node if too_large.intersection(node.input)]
