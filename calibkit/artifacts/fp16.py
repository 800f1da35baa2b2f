"""FP16 ONNX for TensorRT 11's strongly typed networks: FP16 weights and compute, FP32 graph I/O.

Uses ONNX Runtime's maintained converter (``onnxruntime.transformers.float16``). Kept in FP32,
besides that converter's own block list (NMS, TopK, Range, CumSum, Min/Max, ...): the ops whose
FP16 range or accumulation is a known accuracy risk, listed in :data:`FP32_OPS`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from calibkit.fileio import atomic_path
from calibkit.onnx_model import load_model

FP32_OPS = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf",
            "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL2", "ReduceLogSumExp",
            "LayerNormalization", "InstanceNormalization", "GroupNormalization")


def export_fp16(model_path: Path, out: Path) -> Path:
    """Write the FP16-cast model to ``out`` atomically and check it with onnx.checker."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = load_model(Path(model_path))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    )
    OnnxModel(converted).topological_sort()
    onnx.checker.check_model(converted)
    with atomic_path(Path(out)) as tmp:
        onnx.save(converted, str(tmp))
    return Path(out)
