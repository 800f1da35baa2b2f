"""Where a model's CPU time goes, per op type, from ONNX Runtime's own profiler.

An INT8 model is only faster where ONNX Runtime turned its Q/DQ groups into integer kernels; ops it
could not fuse run in float between a DequantizeLinear and a QuantizeLinear, and pay for both. The
profile says which share of the time went to integer kernels, to those conversions and to float ops,
so a report can name the ops that make an INT8 candidate slower than FP32 on this backend.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# Kernels that compute in integers (ONNX Runtime's fused Q/DQ groups and integer ops).
INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                         "QAttention"})
CONVERSION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def kind_of(op: str) -> str:
    """``integer``, ``conversion`` or ``float``."""
    if op in CONVERSION_OPS:
        return "conversion"
    if op.startswith("QLinear") or op in INTEGER_OPS:
        return "integer"
    return "float"


@dataclass(frozen=True)
class OpTime:
    """Total kernel time of one op type over the profiled runs, and its share of all kernel time."""

    op: str
    ms: float
    share: float
    kind: str


def _node_events(model: Path, input_shape: Sequence[int], batch: int, runs: int, seed: int,
                 providers: Sequence) -> list[dict]:
    """The kernel events of ONNX Runtime's profiler over ``runs`` inferences of a random input."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="calibkit-profile-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model), options, providers=list(providers))
        data = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
        for _ in range(runs):
            session.run(None, {session.get_inputs()[0].name: data})
        events = json.loads(Path(session.end_profiling()).read_text())
    return [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]


def profile_ops(model: Path, input_shape: Sequence[int], batch: int = 1, runs: int = 10, seed: int = 0) -> list[OpTime]:
    """Kernel time per op type over ``runs`` inferences of a random ``(batch, *input_shape)`` input,
    largest first (shares, not latency: profiling slows every kernel alike)."""
    totals: dict[str, float] = defaultdict(float)
    for event in _node_events(model, input_shape, batch, runs, seed, ["CPUExecutionProvider"]):
        totals[event["args"]["op_name"]] += event["dur"] / 1000.0
    overall = sum(totals.values()) or 1.0
    return sorted((OpTime(op, ms, ms / overall, kind_of(op)) for op, ms in totals.items()), key=lambda t: -t.ms)


def summarize(times: Sequence[OpTime], top: int = 4) -> dict:
    """Shares of integer kernels, conversions and float ops, and the float ops that cost the most."""
    shares = {kind: sum(t.share for t in times if t.kind == kind) for kind in ("integer", "conversion", "float")}
    return {**shares, "top_float": [{"op": t.op, "share": t.share} for t in times if t.kind == "float"][:top]}


# Copies between host and device that ONNX Runtime inserts itself: not model nodes.
COPY_OPS = frozenset({"MemcpyFromHost", "MemcpyToHost"})


def cpu_fallbacks(model: Path, input_shape: Sequence[int], providers: Sequence) -> dict:
    """Which nodes ONNX Runtime ran on the CPU although ``providers`` prefers another (a GPU): from one
    profiled inference. ``{"nodes": n, "on_cpu": [{"node", "op"}, ...]}``."""
    seen: dict[str, tuple[str, str]] = {}
    for event in _node_events(model, input_shape, 1, 1, 0, providers):
        args = event["args"]
        if args.get("op_name") not in COPY_OPS:
            seen[event["name"][: -len("_kernel_time")]] = (args.get("op_name", ""), args.get("provider", ""))
    on_cpu = [{"node": name, "op": op} for name, (op, provider) in seen.items() if provider == "CPUExecutionProvider"]
    return {"nodes": len(seen), "on_cpu": on_cpu}


def engine_layer_times(models: Sequence[tuple[str, str, Path]], shape: Sequence[int], backend: str,
                       runs: int = 10, top: int = 30) -> dict[str, dict[str, float]]:
    """Per model, the mean GPU time of its costliest engine layers (ms, batch 1), from the engine
    runtime's IProfiler: for backends whose ``profiling`` is ``layers``."""
    from calibkit.backends import load

    data = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    found = {}
    for name, precision, path in models:
        session = load(path, precision, backend, profile_layers=True)
        for _ in range(runs):
            session.run(data)
        costliest = sorted(session.layer_times_ms.items(), key=lambda item: -item[1])[:top]
        found[name] = {layer: ms / runs for layer, ms in costliest}
    return found
