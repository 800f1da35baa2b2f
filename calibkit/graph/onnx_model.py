"""Read what calibkit needs from an ONNX model: its image input, its float activations, its hash."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import onnx
from onnx import numpy_helper

from calibkit.errors import CalibkitError
from calibkit.graph.attributes import attribute

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class ImageInput:
    """The model's single image input: name, layout, batch and spatial size (``None`` where dynamic)."""

    name: str
    layout: str
    height: int | None
    width: int | None
    channels: int
    batch: int | None = None


def load_model(path: Path) -> onnx.ModelProto:
    """Load an ONNX file or fail with a one-line message naming it."""
    path = check_model_file(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise CalibkitError(f"{path}: not a readable ONNX model ({type(exc).__name__}); re-export it") from exc
    if not model.graph.node:
        raise CalibkitError(f"{path}: not an ONNX model (it holds no graph); re-export it")
    return model


def model_outline(path: Path) -> onnx.ModelProto:
    """The model at ``path`` without its weights' values (their names, types and shapes kept): enough to
    read its inputs, metadata and nodes. Memoised per file version, so a 470 MB model is parsed once
    per command for these and its weights are not held; each call returns its own copy."""
    path = check_model_file(path)
    stat = path.stat()
    outline = onnx.ModelProto()
    outline.CopyFrom(_outline(str(path.resolve()), stat.st_mtime_ns, stat.st_size))
    return outline


@lru_cache(maxsize=8)
def _outline(path: str, mtime_ns: int, size: int) -> onnx.ModelProto:
    model = load_model(Path(path))
    for tensor in all_tensors(model.graph):
        for values in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(values)
    outline = onnx.ModelProto()
    outline.CopyFrom(model)  # a message of its own: the cleared one keeps its weights' memory until it goes
    return outline


def all_tensors(graph: onnx.GraphProto):
    """Every tensor of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for found in node.attribute:
            if found.HasField("t"):
                yield found.t
            yield from found.tensors
            for sub in [found.g] if found.HasField("g") else []:
                yield from all_tensors(sub)
            for sub in found.graphs:
                yield from all_tensors(sub)


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (an exporter's task, class names, input size)."""
    return {prop.key: prop.value for prop in model.metadata_props}


def check_model_file(path: Path) -> Path:
    """``path`` when it is a non-empty file, else one line saying what it is instead (before any work)."""
    path = Path(path)
    if path.is_dir():
        raise CalibkitError(f"{path}: is a folder; pass an .onnx file to --model")
    if not path.is_file():
        raise CalibkitError(f"{path}: model file does not exist; pass an .onnx file to --model")
    if path.stat().st_size == 0:
        raise CalibkitError(f"{path}: the model file is empty; export the model again")
    return path


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in initializers]


def tensor_dims(info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    """The declared shape of a graph input or output, ``None`` for a dynamic (symbolic or unset) axis."""
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in info.type.tensor_type.shape.dim)


def model_outputs(model: onnx.ModelProto) -> list[tuple[str, tuple[int | None, ...]]]:
    """Name and declared shape of every graph output, in order."""
    return [(out.name, tensor_dims(out)) for out in model.graph.output]


def image_input(model: onnx.ModelProto, path: Path | str = "model") -> ImageInput:
    """Check the model takes one 4-D float image tensor with 3 channels and return its description."""
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(inp.name for inp in inputs)
        raise CalibkitError(f"{path}: model has {len(inputs)} inputs ({names}); calibkit needs one image input")
    inp = inputs[0]
    tensor_type = inp.type.tensor_type
    dims = list(tensor_dims(inp))
    if tensor_type.elem_type not in _FLOAT_TYPES or len(dims) != 4:
        raise CalibkitError(
            f"{path}: input {inp.name!r} is {onnx.TensorProto.DataType.Name(tensor_type.elem_type)} "
            f"with shape {dims}; calibkit needs a float image tensor N x C x H x W or N x H x W x C"
        )
    if dims[1] in (1, 3) and dims[3] not in (1, 3):
        layout, channels, height, width = "NCHW", dims[1], dims[2], dims[3]
    elif dims[3] in (1, 3):
        layout, channels, height, width = "NHWC", dims[3], dims[1], dims[2]
    else:
        raise CalibkitError(
            f"{path}: input {inp.name!r} has shape {dims} with no 3-channel axis; "
            "calibkit feeds RGB images (3 channels) in NCHW or NHWC"
        )
    if channels != 3:
        raise CalibkitError(
            f"{path}: input {inp.name!r} expects {channels} channel(s); calibkit feeds RGB images (3 channels)"
        )
    return ImageInput(inp.name, layout, height, width, channels, dims[0])


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Names of the graph input and every float tensor produced by a node, in topological order.

    Types come from the model's own value_info where it covers every node output (as after ONNX
    Runtime's quantization pre-processing), else from ONNX shape inference.
    """
    types = _tensor_types(model)
    if any(out and out not in types for node in model.graph.node for out in node.output):
        types = _tensor_types(onnx.shape_inference.infer_shapes(shape_skeleton(model)))
    names = [inp.name for inp in _graph_inputs(model)]
    for node in model.graph.node:
        names.extend(out for out in node.output if out and types.get(out) in _FLOAT_TYPES)
    return list(dict.fromkeys(names))


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    infos = list(model.graph.value_info) + list(model.graph.output)
    return {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}


def constant_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensors whose value is fixed in the graph: initializers and outputs of Constant nodes."""
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = attribute(node, "value")
            if value is not None:
                constants[node.output[0]] = value
    return constants


def clamp_bounds(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[float, float] | None:
    """``(low, high)`` of a Relu or of a Clip with constant bounds (infinite where absent), else None."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    attributes = {a.name: a.f for a in node.attribute}
    if attributes:
        return attributes.get("min", -math.inf), attributes.get("max", math.inf)
    bounds = []
    for name, default in zip((list(node.input[1:3]) + ["", ""])[:2], (-math.inf, math.inf)):
        if not name:
            bounds.append(default)
        elif name in constants:
            bounds.append(float(numpy_helper.to_array(constants[name]).reshape(-1)[0]))
        else:
            return None
    return bounds[0], bounds[1]


# Initializers up to this many elements keep their values for shape inference (shapes, axes, scales).
SHAPE_CONSTANT_ELEMENTS = 64


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for shape inference: its large initializers (weights) as typed graph inputs, so that
    inferring the shapes of a 400 MB model does not copy its weights (twice: the copy and the inferred)."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    listed = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if math.prod(init.dims) <= SHAPE_CONSTANT_ELEMENTS:
            graph.initializer.append(init)
        elif init.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skeleton


def with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the value infos shape inference finds, added in place: the same graph ONNX's
    ``infer_shapes`` returns, inferred on its :func:`shape_skeleton` so that no copy of the weights is made."""
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(shape_skeleton(model)).graph.value_info)
    return model


def activation_bytes(model: onnx.ModelProto, input_shape: Sequence[int]) -> dict[str, int]:
    """Bytes of every node output for one input of ``input_shape``, from shape inference; an output whose
    shape stays unknown counts as large as the largest known one (an over-estimate, never an under-)."""
    sized = shape_skeleton(model)
    dims = sized.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, input_shape):
        dim.Clear()
        dim.dim_value = int(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(sized)
    except Exception:
        inferred = sized
    known: dict[str, int] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        shape = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
        if shape and all(shape):
            known[info.name] = math.prod(shape) * 4
    largest = max(known.values(), default=1 << 20)
    return {out: known.get(out, largest) for node in model.graph.node for out in node.output if out}


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The type (element type and shape, batch left symbolic) of every tensor shape inference types."""
    inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model))
    infos = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    return {info.name: info.type for info in infos if info.type.HasField("tensor_type")}


def has_subgraph(node: onnx.NodeProto) -> bool:
    """Whether ``node`` holds a graph (If, Loop, Scan): its subgraphs may read outer tensors by name."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of ``graph`` reads (left behind by graph surgery)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``model`` whose graph outputs also include the tensors ``names`` (order kept)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {out.name for out in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return exposed


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed: used as model identity in caches and provenance. Memoised per file
    version, since one command checks a model against its runs and records it in provenance."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
