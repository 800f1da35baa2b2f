"""What TensorRT-RTX makes of each model: built or not, which precision every convolution and matrix
product runs at, the nodes calibkit quantized that the engine runs in float, kernels and sizes.

The builder's layer list (:mod:`calibkit.engine.layers`) names the ONNX nodes behind each engine layer.
A Conv/ConvTranspose/Gemm/MatMul of the ONNX model runs at the precision of the computing layer
(convolution, matrix product) that covers it; calibkit asked for INT8 where a data input of the node
comes out of a DequantizeLinear. Structure only: nothing here is a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import onnx

from calibkit.engine.builder import DEFAULT_TARGET, TARGETS, BuildJob, BuildResult, target_for
from calibkit.engine.layers import EngineLayer, parse_layers, parse_memory
from calibkit.errors import CalibkitError
from calibkit.graph.attributes import attribute
from calibkit.graph.onnx_model import file_sha256, load_model

# ONNX ops whose precision the check follows: the ones TensorRT runs on tensor cores in INT8.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# A generated kernel's constant at least this large is counted as an activation-sized constant (the
# channel padding TensorRT-RTX lays out in front of INT8 depthwise convolutions), not a parameter.
LARGE_CONSTANT_BYTES = 64 * 1024
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class EngineModel:
    """One model to build: its name in the report, precision, ONNX path, and engine file label."""

    name: str
    precision: str
    path: Path
    label: str


@dataclass
class NodePrecision:
    """One ONNX convolution or matrix product: what calibkit asked for and what the engine runs."""

    node: str
    op_type: str
    output: str
    requested: str
    engine: str | None
    layer: str | None
    layer_type: str | None


@dataclass
class EngineCheck:
    """The engine TensorRT-RTX built (or refused to build) from one model."""

    name: str
    precision: str
    model: str
    target: str
    built: bool
    errors: list[str]
    layers: list[EngineLayer] = field(default_factory=list)
    nodes: list[NodePrecision] = field(default_factory=list)
    engine_bytes: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    builder_peak_rss_gb: float = 0.0
    padding: dict = field(default_factory=dict)
    engine_file: str | None = None

    @property
    def kernels(self) -> int:
        return sum(layer.is_kernel for layer in self.layers)

    @property
    def fell_to_float(self) -> list[NodePrecision]:
        """Nodes calibkit quantized that the engine does not run in INT8."""
        return [n for n in self.nodes if n.requested == "int8" and n.engine != "Int8"]

    def precision_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.engine or "not in engine"] = counts.get(node.engine or "not in engine", 0) + 1
        return dict(sorted(counts.items()))

    def verdict(self) -> str:
        """One sentence: built or not, and for INT8 whether everything calibkit quantized runs INT8."""
        if not self.built:
            return f"TensorRT-RTX cannot build this model for {self.target}: {self.errors[0] if self.errors else 'no reason given'}"
        requested = [n for n in self.nodes if n.requested == "int8"]
        if not requested:
            counts = ", ".join(f"{count} {dtype}" for dtype, count in self.precision_counts().items())
            return f"builds for {self.target}; its {len(self.nodes)} convolutions and matrix products run {counts or 'none'}"
        fallen = self.fell_to_float
        if not fallen:
            return (f"builds for {self.target}; all {len(requested)} convolutions and matrix products calibkit "
                    "quantized run INT8 in TensorRT")
        names = ", ".join(f"{n.node} ({n.engine or 'not in engine'})" for n in fallen[:12])
        more = f" and {len(fallen) - 12} more" if len(fallen) > 12 else ""
        return (f"INT8 requested, runs float in TensorRT: {len(fallen)} of {len(requested)} quantized "
                f"convolutions and matrix products ({names}{more})")

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision, "model": self.model, "target": self.target,
                "built": self.built, "errors": self.errors, "verdict": self.verdict(),
                "kernels": self.kernels, "engine_mb": round(self.engine_bytes / 1e6, 3),
                "weights_mb": round(self.memory.get("weights_bytes", 0) / 1e6, 3),
                "activation_mb": round(self.memory.get("activation_bytes", 0) / 1e6, 3),
                "build_s": round(self.seconds, 2), "builder_peak_rss_gb": round(self.builder_peak_rss_gb, 2),
                "precision_counts": self.precision_counts(),
                "fell_to_float": [n.node for n in self.fell_to_float],
                "padding": self.padding, "engine_file": self.engine_file,
                "nodes": [asdict(n) for n in self.nodes], "layers": [layer.to_dict() for layer in self.layers]}


def requested_precisions(model: onnx.ModelProto) -> dict[str, tuple[str, str, str]]:
    """``node -> (op_type, output tensor, 'int8' | 'float')`` for every convolution and matrix product: INT8
    where any of its data inputs (not the bias) is the output of a DequantizeLinear, as calibkit quantizes
    weights and activations together (a quantized weight beside a float activation runs float)."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    found = {}
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            data = [name for name in node.input[:2] if name]
            found[node.name] = (node.op_type, node.output[0], "int8" if any(n in dequantized for n in data) else "float")
    return found


def depthwise_convolutions(model: onnx.ModelProto) -> set[str]:
    """Names of the Conv nodes whose group is more than one (depthwise and grouped convolutions)."""
    return {node.name for node in model.graph.node if node.op_type == "Conv"
            and attribute(node, "group", 1) > 1}


def node_precisions(model: onnx.ModelProto, layers: Sequence[EngineLayer]) -> list[NodePrecision]:
    """Each ONNX convolution and matrix product with the precision of the engine layer that computes it:
    a convolution or matrix-product layer where one covers it, else any layer that names it."""
    covering: dict[str, EngineLayer] = {}
    for layer in layers:
        for node in layer.onnx_nodes:
            if layer.computes and (node not in covering or not covering[node].computes):
                covering[node] = layer
            covering.setdefault(node, layer)
    rows = []
    for node, (op_type, output, requested) in requested_precisions(model).items():
        layer = covering.get(node)
        rows.append(NodePrecision(node, op_type, output, requested, layer.precision if layer else None,
                                  layer.name if layer else None, layer.type if layer else None))
    return rows


def padding_constants(model: onnx.ModelProto, layers: Sequence[EngineLayer]) -> dict:
    """Activation-sized constants of generated kernels and the depthwise convolutions they feed: bytes in
    all as the layer list declares them (each constant once, by name; the engine file may hold them in
    less), and the convolutions."""
    depthwise = depthwise_convolutions(model)
    consumer = {t.name: layer for layer in layers for t in layer.inputs}
    declared: dict[str, int] = {}
    fed: list[str] = []
    for layer in layers:
        large = {t.name: t.nbytes for t in layer.constants if t.nbytes >= LARGE_CONSTANT_BYTES}
        if layer.type != "kgen" or not large:
            continue
        declared.update(large)
        for out in layer.outputs:
            target = consumer.get(out.name)
            fed += [n for n in (target.onnx_nodes if target else ()) if n in depthwise]
    return {"bytes": sum(declared.values()), "depthwise_fed": sorted(set(fed))}


# What the builder said of models already built in this process, by model bytes, input shape and target:
# ``calibrate --compare`` checks the run's models in calibrate and again in compare.
_BUILT: dict[tuple[str, tuple[int, ...], str], BuildResult] = {}


def build(model: EngineModel, shape: Sequence[int], target: str, engine_dir: Path | None = None) -> EngineCheck:
    """Build ``model`` in a child process (:mod:`calibkit.engine.builder`) and read its engine back; the
    same model bytes, shape and target are built once per process unless the engine is to be kept."""
    engine_path = engine_dir / f"{model.label}.{target}.trtrtx.engine" if engine_dir is not None else None
    job = BuildJob(str(model.path), tuple(int(d) for d in shape), target, str(engine_path) if engine_path else None)
    key = (file_sha256(Path(model.path)), job.shape, target)
    if engine_path is None and key in _BUILT:
        return read_back(model, target, _BUILT[key])
    result = _run_builder(job)
    if result.built:
        _BUILT[key] = result
    return read_back(model, target, result, engine_path)


def _run_builder(job: BuildJob) -> BuildResult:
    """One build in a child process; a crash, timeout or missing result is a failed build, in words."""
    with tempfile.TemporaryDirectory(prefix="calibkit-engine-") as tmp:
        jobs, results = Path(tmp) / "job.json", Path(tmp) / "result.json"
        jobs.write_text(json.dumps(asdict(job)), encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-m", "calibkit.engine.builder", str(jobs), str(results)],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return BuildResult(False, [f"the build took longer than {BUILD_TIMEOUT_S} s and was stopped"])
        if done.returncode != 0 or not results.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            return BuildResult(False, [f"the TensorRT-RTX builder process failed ({tail[0][:300]})"])
        return BuildResult(**json.loads(results.read_text(encoding="utf-8")))


def read_back(model: EngineModel, target: str, result: BuildResult, engine_path: Path | None = None) -> EngineCheck:
    """The check of one build result against the ONNX model it came from."""
    check = EngineCheck(model.name, model.precision, str(model.path), target, result.built, list(result.errors),
                        seconds=result.seconds, builder_peak_rss_gb=result.peak_rss_gb)
    if not result.built:
        return check
    graph = load_model(model.path)
    check.layers = parse_layers(result.layers_log)
    check.nodes = node_precisions(graph, check.layers)
    check.engine_bytes = result.engine_bytes
    check.memory = parse_memory(result.layers_log)
    check.padding = padding_constants(graph, check.layers)
    check.engine_file = str(engine_path) if engine_path else None
    return check


def choose_target(requested: str | None) -> str:
    """``requested`` checked against TensorRT-RTX's targets; by default the local GPU's architecture
    where TensorRT-RTX builds for it, else sm89."""
    if requested:
        name = requested.lower().replace("_", "")
        if name not in TARGETS:
            raise CalibkitError(f"--trt-target {requested!r}: TensorRT-RTX builds for {', '.join(TARGETS)}")
        return name
    from calibkit.engine.gpu import local_gpu

    gpu = local_gpu()
    return (target_for(gpu.capability) if gpu else None) or DEFAULT_TARGET
