"""The engine's layer list as TensorRT(-RTX) prints it after a build with DETAILED profiling verbosity.

The builder logs one VERBOSE message that starts with ``Layers:`` and holds one line per engine layer:
``Name: ..., LayerType: ..., Inputs: [ { ... Datatype: Int8 ... } ], Constants: [ ... ], Outputs: [ ... ],
TacticName: ..., Metadata: [ONNX Layer: node][ONNX Layer: node]``. This module turns that text into
:class:`EngineLayer` records; it needs no TensorRT, so it is tested on logs kept as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What each layer type the builder prints is, for readers of the report. A layer type not listed here
# is shown as printed.
LAYER_KINDS = {
    "correlation": "convolution",
    "deconvolution": "transposed convolution",
    "gemm": "matrix product",
    "runtime_fusion": "convolution fused with its epilogue",
    "kgen": "generated pointwise kernel",
    "runtime_function": "runtime function",
    "signal": "stream signal (no kernel)",
    "wait": "stream wait (no kernel)",
}
# Layers that compute a convolution or matrix product: the precision of their inputs is the precision the
# ONNX Conv/ConvTranspose/Gemm/MatMul they cover runs at.
COMPUTE_TYPES = frozenset({"correlation", "deconvolution", "gemm", "runtime_fusion"})
# Synchronisation between streams: listed by the builder, but no kernel runs.
NOT_KERNELS = frozenset({"signal", "wait"})

_BYTES = {"Int8": 1, "UInt8": 1, "Bool": 1, "FP8": 1, "Half": 2, "BFloat16": 2, "Float": 4, "Int32": 4, "Int64": 8,
          "Int4": 0.5, "FP4": 0.5}
_TENSOR = re.compile(r"\{ Name: (?P<name>[^,]*), Dimensions: \[(?P<dims>[-\d,]*)\][^{}]*?Datatype: (?P<dtype>\w+)")
_SECTION = re.compile(r", (Inputs|Constants|Outputs): \[(.*?)\](?=, (?:Constants|Outputs|TacticName|StreamId|Metadata)"
                      r"|$)")
_ONNX = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_MEMORY = {"activation_bytes": re.compile(r"Total Activation Memory: (\d+)"),
           "weights_bytes": re.compile(r"Total Weights Memory: (\d+)")}


@dataclass(frozen=True)
class Tensor:
    """One input, output or constant of an engine layer."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= max(dim, 1)
        return int(count * _BYTES.get(self.dtype, 4))


@dataclass(frozen=True)
class EngineLayer:
    """One layer of a built engine: its type, tensors and the ONNX nodes it was built from."""

    name: str
    type: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    constants: tuple[Tensor, ...]
    onnx_nodes: tuple[str, ...]

    @property
    def computes(self) -> bool:
        return self.type in COMPUTE_TYPES

    @property
    def is_kernel(self) -> bool:
        return self.type not in NOT_KERNELS

    @property
    def precision(self) -> str:
        """The datatype its computation reads: Int8 when every activation input is Int8, else the
        widest input type (a convolution with a float input runs in float whatever its weights are)."""
        types = {t.dtype for t in self.inputs} or {t.dtype for t in self.constants}
        for dtype in ("Float", "Half", "BFloat16", "FP8", "Int8"):
            if dtype in types:
                return dtype
        return "/".join(sorted(types)) or "unknown"

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "kind": LAYER_KINDS.get(self.type, self.type),
                "precision": self.precision, "inputs": [t.dtype for t in self.inputs],
                "outputs": [t.dtype for t in self.outputs], "constant_bytes": sum(t.nbytes for t in self.constants),
                "onnx_nodes": list(self.onnx_nodes)}


def _tensors(text: str) -> tuple[Tensor, ...]:
    return tuple(Tensor(m["name"].strip(), tuple(int(d) for d in m["dims"].split(",") if d), m["dtype"])
                 for m in _TENSOR.finditer(text))


def parse_layer(line: str) -> EngineLayer | None:
    """One ``Name: ..., LayerType: ...`` line, or None for any other line."""
    head = re.match(r"Name: (?P<name>.*?), LayerType: (?P<type>\w+)", line)
    if head is None:
        return None
    sections = {key: _tensors(body) for key, body in _SECTION.findall(line)}
    return EngineLayer(head["name"], head["type"], sections.get("Inputs", ()), sections.get("Outputs", ()),
                       sections.get("Constants", ()), tuple(dict.fromkeys(_ONNX.findall(line))))


def parse_layers(log: str) -> list[EngineLayer]:
    """Every engine layer in a build log (the ``Layers:`` message), in engine order."""
    start = log.find("Layers:\n")
    if start < 0:
        return []
    body = log[start:].split("\n\nI/O Tensors", 1)[0]
    return [layer for layer in map(parse_layer, body.splitlines()[1:]) if layer is not None]


def parse_memory(log: str) -> dict[str, int]:
    """The builder's own totals of activation and weights memory, in bytes (absent when not printed)."""
    found = {key: pattern.findall(log) for key, pattern in _MEMORY.items()}
    return {key: int(values[-1]) for key, values in found.items() if values}
