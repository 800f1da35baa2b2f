"""The graph calibkit calibrates and quantizes: the user's FP32 model, normalised the way TensorRT sees it.

Real exports (Paddle2ONNX, TF, older PyTorch) keep weights in ``Constant`` nodes, reach parameters
through ``Identity``, leave BatchNormalization unfused and use opsets too old for per-channel Q/DQ.
Calibrated as exported, their weights are histogrammed and clipped as activations and a Q/DQ pair
lands between each Conv and its BatchNorm, which TensorRT then cannot fold. So before statistics:

* the opset is raised to :data:`MIN_QDQ_OPSET` with ONNX's version converter;
* ONNX Runtime's basic, provider-independent graph rewrites run (constant folding, Identity/Dropout
  elimination, Conv+BatchNorm / Conv+Add / Conv+Mul fusion), and the rewritten standard-ONNX graph is
  kept: weights become initializers and every remaining node output is a true activation;
* every node gets a name (placement exclusions and reports refer to nodes by name);
* a model that is already quantized is refused.

The user's file is never changed; :func:`check_equivalent` runs both graphs to prove the FP32 outputs
did not move. Normalisation is deterministic, so every command derives the same graph (and tensor
names) from the same model file.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from calibkit.errors import CalibkitError
from calibkit.onnx_model import load_model

# Per-channel DequantizeLinear (its axis attribute) and integer Clip need opset 13.
MIN_QDQ_OPSET = 13

# Ops that only appear in a model that has been quantized already.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QGemm", "QAttention", "DynamicQuantizeMatMul",
})

# ONNX Runtime rewrites left out: they change the graph's structure rather than its constants, and
# TensorRT fuses these patterns itself (MatMul+Add would become Reshape-Gemm-Reshape in 3-D models).
KEPT_PATTERNS = ("MatMulAddFusion", "TransposeOptimizer")

# FP32 outputs of the normalised graph may differ from the original's by this much, relative to the
# output's own magnitude: the rounding of a re-associated Conv+BN, never a changed result.
EQUIVALENCE_TOLERANCE = 1e-4


@dataclass
class Normalized:
    """A normalised graph and what normalising it changed (op counts before and after)."""

    model: onnx.ModelProto
    opset: tuple[int, int]
    removed: dict[str, int] = field(default_factory=dict)
    max_relative_error: float | None = None

    def summary(self) -> str:
        """One line for provenance, e.g. ``opset 11->13; Constant -308, BatchNormalization -35``."""
        parts = [f"opset {self.opset[0]}->{self.opset[1]}"] if self.opset[0] != self.opset[1] else []
        parts += [f"{op} -{count}" for op, count in sorted(self.removed.items())]
        if self.max_relative_error is not None:
            parts.append(f"FP32 outputs within {self.max_relative_error:.1e} (relative)")
        return "; ".join(parts) or "unchanged"


def refuse_quantized(model: onnx.ModelProto, path: Path | str) -> None:
    """Raise when ``model`` already holds quantization ops: calibkit needs the FP32 original."""
    found = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})
    if found:
        raise CalibkitError(f"{path}: the model is already quantized ({', '.join(found)}); "
                            "pass the FP32 model it was made from")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_QDQ_OPSET)


def normalize(model: onnx.ModelProto, path: Path | str = "model") -> Normalized:
    """The normalised copy of ``model`` (see the module docstring); ``model`` is not modified."""
    import onnxruntime as ort

    refuse_quantized(model, path)
    before = default_opset(model)
    upgraded = model
    if before < MIN_QDQ_OPSET:
        from onnx import version_converter

        try:
            upgraded = version_converter.convert_version(model, MIN_QDQ_OPSET)
        except Exception as exc:
            raise CalibkitError(f"{path}: opset {before} cannot be converted to {MIN_QDQ_OPSET}, which per-channel "
                                f"Q/DQ needs ({type(exc).__name__}); re-export with opset >= {MIN_QDQ_OPSET}") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="calibkit-normalize-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "normalized.onnx")
        try:
            ort.InferenceSession(upgraded.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(KEPT_PATTERNS))
        except Exception as exc:
            raise CalibkitError(f"{path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:200]})") from exc
        normalized = onnx.load(options.optimized_model_filepath)
    _keep_used_opsets(normalized)
    _name_nodes(normalized)
    # ONNX Runtime's saved types describe its own kernels' view; later rewrites (FP16 casts, Q/DQ)
    # infer shapes afresh, and stale entries would contradict them.
    del normalized.graph.value_info[:]
    normalized.graph.name = model.graph.name
    ops_before, ops_after = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in normalized.graph.node)
    removed = {op: ops_before[op] - ops_after[op] for op in ops_before if ops_before[op] > ops_after[op]}
    return Normalized(normalized, (before, default_opset(normalized)), removed)


@lru_cache(maxsize=2)
def _normalized_bytes(path: str, mtime_ns: int, size: int) -> tuple[bytes, tuple[int, int], tuple]:
    done = normalize(load_model(Path(path)), path)
    return done.model.SerializeToString(), done.opset, tuple(sorted(done.removed.items()))


def normalized_model(path: Path) -> Normalized:
    """:func:`normalize` of the model file at ``path``, memoised per file version within the process
    (several exports of one run share it); each call returns its own copy to modify."""
    path = Path(path)
    if not path.is_file():
        raise CalibkitError(f"{path}: model file does not exist; pass an .onnx file to --model")
    stat = path.stat()
    data, opset, removed = _normalized_bytes(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return Normalized(onnx.load_from_string(data), opset, dict(removed))


def check_equivalent(original: onnx.ModelProto, normalized: Normalized, input_shape: Sequence[int],
                     path: Path | str = "model", seed: int = 0) -> float:
    """Run both graphs on one seeded random input of ``input_shape`` (batch included) and return the
    largest output difference relative to that output's magnitude; raise past the tolerance."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in (original, normalized.model)]
    first = sessions[0].get_inputs()[0]
    dtype = np.float16 if first.type == "tensor(float16)" else np.float32
    feed = {first.name: np.random.default_rng(seed).uniform(0, 1, tuple(input_shape)).astype(dtype)}
    worst = 0.0
    for out, a, b in zip(sessions[0].get_outputs(), *(s.run(None, feed) for s in sessions)):
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise CalibkitError(f"{path}: normalising the graph changed output {out.name}'s shape {a.shape} -> "
                                f"{b.shape}; please report this model")
        finite = np.isfinite(a)
        scale = max(1.0, float(np.abs(a[finite]).max(initial=0.0)))
        error = float(np.abs(a - b)[finite].max(initial=0.0)) / scale
        worst = max(worst, error)
        if error > EQUIVALENCE_TOLERANCE:
            raise CalibkitError(f"{path}: normalising the graph moved output {out.name} by {error:.1e} of its range; "
                                "please report this model")
    normalized.max_relative_error = worst
    return worst


def _keep_used_opsets(model: onnx.ModelProto) -> None:
    """ONNX Runtime's saved graph imports every domain it knows; keep the default and the ones used."""
    used = {node.domain or "" for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if (o.domain if o.domain != "ai.onnx" else "") in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (``<op>_<index>``): exclusions and reports refer to nodes by name."""
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
