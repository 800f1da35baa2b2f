"""The graph calibkit calibrates and quantizes: the user's FP32 model, normalised the way TensorRT sees it.

Real exports (Paddle2ONNX, TF, older PyTorch) keep weights in ``Constant`` nodes, reach parameters
through ``Identity``, leave BatchNormalization unfused and use opsets too old for per-channel Q/DQ.
Calibrated as exported, their weights are histogrammed and clipped as activations and a Q/DQ pair
lands between each Conv and its BatchNorm, which TensorRT then cannot fold. So before statistics:

* the opset is raised to :data:`MIN_QDQ_OPSET` with ONNX's version converter;
* ONNX Runtime's basic, provider-independent graph rewrites run (constant folding, Identity/Dropout
  elimination, Conv+BatchNorm / Conv+Add / Conv+Mul fusion), and the rewritten standard-ONNX graph is
  kept: weights become initializers and every remaining node output is a true activation;
* then the named passes of :data:`PASSES`, each with its reason: unused opset imports dropped, every
  node named (placement exclusions and reports refer to nodes by name), stale value infos dropped;
* a model that is already quantized is refused.

The user's file is never changed; :func:`check_equivalent` runs both graphs to prove the FP32 outputs
did not move. Normalisation is deterministic, so every command derives the same graph (and tensor
names) from the same model file.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import all_tensors, load_model

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
    file: Path | None = None  # the memo's copy on disk of the graph as normalised, which ONNX Runtime reads

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
    refuse_quantized(model, path)
    upgraded = _upgraded(model, path)
    return _rewritten(upgraded.SerializeToString(), default_opset(model), _op_counts(model), model.graph.name, path)


def normalize_file(path: Path) -> Normalized:
    """:func:`normalize` of the model file at ``path``, holding one copy of its weights at a time: ONNX
    Runtime reads the file itself unless the opset has to be raised first."""
    model = load_model(Path(path))
    refuse_quantized(model, path)
    before, counts, name = default_opset(model), _op_counts(model), model.graph.name
    if before >= MIN_QDQ_OPSET:
        del model
        return _rewritten(str(path), before, counts, name, path)
    data = _upgraded(model, path).SerializeToString()
    del model
    return _rewritten(data, before, counts, name, path)


def _op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _upgraded(model: onnx.ModelProto, path: Path | str) -> onnx.ModelProto:
    """``model`` at :data:`MIN_QDQ_OPSET` at least."""
    before = default_opset(model)
    if before >= MIN_QDQ_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_QDQ_OPSET)
    except Exception as exc:
        raise CalibkitError(f"{path}: opset {before} cannot be converted to {MIN_QDQ_OPSET}, which per-channel "
                            f"Q/DQ needs ({type(exc).__name__}); re-export with opset >= {MIN_QDQ_OPSET}") from exc


def _rewritten(source: bytes | str, before: int, counts: Counter, name: str, path: Path | str) -> Normalized:
    """ONNX Runtime's basic rewrites of the model in ``source`` (serialised, or a file's path), renamed
    and cleaned; ``before``, ``counts`` and ``name`` describe the graph as exported."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="calibkit-normalize-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "normalized.onnx")
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size > MEMO_IN_MEMORY_BYTES:
            # weights written beside the graph as ONNX Runtime goes, not serialised in memory with it first
            # (small models keep the other path: this one saves node attributes in another order)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=list(KEPT_PATTERNS))
        except Exception as exc:
            raise CalibkitError(f"{path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:200]})") from exc
        del source
        normalized = _load_whole(Path(options.optimized_model_filepath))
    for step in PASSES:
        step.apply(normalized)
    normalized.graph.name = name
    after = _op_counts(normalized)
    removed = {op: counts[op] - after[op] for op in counts if counts[op] > after[op]}
    return Normalized(normalized, (before, default_opset(normalized)), removed)


# A normalised graph up to this size is memoised as bytes in memory; a larger one is written to a file of
# the process's own temporary folder and read back per call, so a 470 MB model is not held twice (the
# memo beside the sessions that run it) through a whole command.
MEMO_IN_MEMORY_BYTES = 64 << 20
MEMO_ENTRIES = 2  # the user's model and its equalised graph


class _Memo:
    """Normalised graphs by file version (serialised, or as a file with its weights beside it), the
    oldest let go past :data:`MEMO_ENTRIES`."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple[bytes | Path, tuple[int, int], tuple]] = OrderedDict()
        self.folder: Path | None = None
        self.spilled = 0

    def get(self, key: tuple, path: str) -> tuple[onnx.ModelProto, tuple[int, int], tuple, Path | None]:
        if key not in self.entries:
            done = normalize_file(Path(path))
            large = sum(len(t.raw_data) for t in done.model.graph.initializer) > MEMO_IN_MEMORY_BYTES
            held = self._spill(done.model) if large else done.model.SerializeToString()
            self.entries[key] = (held, done.opset, tuple(sorted(done.removed.items())))
            del done
            while len(self.entries) > MEMO_ENTRIES:
                dropped = self.entries.popitem(last=False)[1][0]
                if isinstance(dropped, Path):
                    dropped.unlink(missing_ok=True)
                    dropped.with_suffix(".bin").unlink(missing_ok=True)
        self.entries.move_to_end(key)
        held, opset, removed = self.entries[key]
        if isinstance(held, Path):
            return _load_whole(held), opset, removed, held
        return onnx.load_from_string(held), opset, removed, None

    def _spill(self, model: onnx.ModelProto) -> Path:
        """``model`` saved in the memo's folder, its weights moved out into a file beside it as they are
        written (``model`` is left without them)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="calibkit-normalized-"))
            atexit.register(shutil.rmtree, self.folder, True)
        self.spilled += 1
        path = self.folder / f"{self.spilled}.onnx"
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.with_suffix(".bin").name)
        return path


def _load_whole(path: Path) -> onnx.ModelProto:
    """The model at ``path`` with any weights kept beside it read in, serialising as if they never left."""
    model = onnx.load(str(path))
    for tensor in all_tensors(model.graph):
        tensor.ClearField("data_location")  # set to DEFAULT on loading; unset in a model saved whole
        if not tensor.doc_string:
            tensor.ClearField("doc_string")
    return model


_MEMO = _Memo()


def normalized_model(path: Path) -> Normalized:
    """:func:`normalize` of the model file at ``path``, memoised per file version within the process
    (several exports of one run share it); each call returns its own copy to modify."""
    path = Path(path)
    if not path.is_file():
        raise CalibkitError(f"{path}: model file does not exist; pass an .onnx file to --model")
    stat = path.stat()
    resolved = str(path.resolve())
    model, opset, removed, file = _MEMO.get((resolved, stat.st_mtime_ns, stat.st_size), resolved)
    return Normalized(model, opset, dict(removed), file=file)


@dataclass
class FP32Reference:
    """The model's FP32 outputs on one seeded random input: what every rewrite of its graph must keep."""

    feed: dict[str, np.ndarray]
    outputs: list[tuple[str, np.ndarray]]


def _unoptimized_session(model: onnx.ModelProto | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # a 1024 px detector's activations go back after the run
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def fp32_reference(model: onnx.ModelProto | Path, input_shape: Sequence[int], seed: int = 0) -> FP32Reference:
    """The outputs of ``model`` (a graph, or a file ONNX Runtime reads itself) on a seeded uniform input
    of ``input_shape`` (batch included), computed once so that the graph need not stay loaded."""
    session = _unoptimized_session(model)
    first = session.get_inputs()[0]
    dtype = np.float16 if first.type == "tensor(float16)" else np.float32
    feed = {first.name: np.random.default_rng(seed).uniform(0, 1, tuple(input_shape)).astype(dtype)}
    names = [out.name for out in session.get_outputs()]
    return FP32Reference(feed, list(zip(names, session.run(names, feed))))


def check_equivalent(reference: FP32Reference, normalized: Normalized, path: Path | str = "model") -> float:
    """Run ``normalized`` on the reference's input and return the largest output difference relative
    to that output's magnitude; raise past the tolerance."""
    found = _unoptimized_session(normalized.file or normalized.model).run([name for name, _ in reference.outputs], reference.feed)
    worst = 0.0
    for (name, a), b in zip(reference.outputs, found):
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise CalibkitError(f"{path}: normalising the graph changed output {name}'s shape {a.shape} -> "
                                f"{b.shape}; please report this model")
        finite = np.isfinite(a)
        scale = max(1.0, float(np.abs(a[finite]).max(initial=0.0)))
        error = float(np.abs(a - b)[finite].max(initial=0.0)) / scale
        worst = max(worst, error)
        if error > EQUIVALENCE_TOLERANCE:
            raise CalibkitError(f"{path}: normalising the graph moved output {name} by {error:.1e} of its range; "
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


def _drop_value_infos(model: onnx.ModelProto) -> None:
    """Forget the value infos ONNX Runtime saved."""
    del model.graph.value_info[:]


@dataclass(frozen=True)
class Pass:
    """One rewrite of the graph ONNX Runtime saved, and why calibkit makes it."""

    name: str
    reason: str
    apply: Callable[[onnx.ModelProto], None]


# The rewrites after ONNX Runtime's basic ones, in order: an exporter quirk that needs another is one more entry.
PASSES = (
    Pass("keep used opsets", "ONNX Runtime's saved graph imports every domain it knows, which checkers and "
         "TensorRT's parser then read as dependencies", _keep_used_opsets),
    Pass("name every node", "exclusions, caches and reports refer to nodes by name; exporters leave some unnamed",
         _name_nodes),
    Pass("drop value infos", "ONNX Runtime's saved types describe its own kernels' view; later rewrites (FP16 "
         "casts, Q/DQ) infer shapes afresh, and stale entries would contradict them", _drop_value_infos),
)
