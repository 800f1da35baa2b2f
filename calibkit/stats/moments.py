"""First and second moments of the inputs of weighted layers: what weight rounding and bias correction need.

A weighted layer computes ``y = W x + b`` over input vectors ``x``: a Conv's input patches (one per
output position and group), a Gemm's or MatMul's input rows. With rounded weights ``W + dW`` the output
moves by ``dW x``. Its mean, ``dW E[x]``, is a shift per output channel that bias correction removes;
its mean square, ``tr(dW H dW^T)`` with ``H = E[x x^T]``, is what GPTQ-style rounding minimises. Both
need only the input's first and second moments, accumulated here from the activations the statistics
pass computes anyway: on its first images, at a seeded sample of output positions per image, so the
cost per image is bounded whatever the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx

from calibkit.graph.attributes import attributes
from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import constant_values
from calibkit.stats import device

# Images whose layer inputs are accumulated (the first ones of the calibration set).
MOMENT_IMAGES = 128

# Input vectors sampled per layer over those images, per column of the layer (a 5x5 depthwise
# convolution: 25 columns, so 7 positions per image, raised to MIN_POSITIONS), within the bounds below
# per image and the positions a layer has. 64 per column measured mean KL 0.0045 against 0.0049 on
# EfficientNet-Lite0, for 1.7x the cost in the statistics pass.
SAMPLES_PER_COLUMN = 32
MIN_POSITIONS, MAX_POSITIONS = 8, 256


@dataclass(frozen=True)
class WeightedLayer:
    """A Conv, Gemm or MatMul with a constant weight, seen as ``groups`` matrices of ``rows x columns``.

    ``axis`` is the weight's output-channel axis: the axis its per-channel quantization scales run along.
    ``bias`` names the float bias the layer adds (a Conv/Gemm input, or the constant of the Add that
    follows a MatMul), if any.
    """

    node: str
    op_type: str
    input: str
    weight: str
    shape: tuple[int, ...]
    axis: int
    bias: str | None = None
    groups: int = 1
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    auto_pad: str = "NOTSET"

    @property
    def rows(self) -> int:
        return self.shape[self.axis] // self.groups

    @property
    def columns(self) -> int:
        return int(np.prod(self.shape)) // self.shape[self.axis]

    def matrices(self, weight: np.ndarray) -> np.ndarray:
        """``weight`` as ``[groups, rows, columns]``; columns in the order :meth:`patches` lays out inputs."""
        if self.op_type == "Conv":
            return weight.reshape(self.groups, self.rows, self.columns)
        return np.moveaxis(weight, self.axis, 0).reshape(1, self.rows, self.columns)

    def weight_from(self, matrices: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`matrices`."""
        if self.op_type == "Conv":
            return matrices.reshape(self.shape)
        moved = [self.shape[self.axis]] + [d for i, d in enumerate(self.shape) if i != self.axis]
        return np.moveaxis(matrices.reshape(moved), 0, self.axis)

    def positions(self, shape: Sequence[int]) -> int:
        """Input vectors per image for an input of ``shape`` (batch first): a Conv's output positions,
        a MatMul's rows (tokens)."""
        if self.op_type != "Conv":
            return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        return int(np.prod(self._output_size(shape)))

    def _output_size(self, shape: Sequence[int]) -> tuple[int, int]:
        kh, kw = self.shape[2:]
        top, left, bottom, right = self._padding(shape[2:], (kh, kw))
        return ((shape[2] + top + bottom - self.dilations[0] * (kh - 1) - 1) // self.strides[0] + 1,
                (shape[3] + left + right - self.dilations[1] * (kw - 1) - 1) // self.strides[1] + 1)

    def patches(self, x: np.ndarray, rng: np.random.Generator, limit: int) -> np.ndarray:
        """Input vectors of one batch ``x`` at up to ``limit`` sampled output positions per image, as
        ``[samples, groups, columns]``."""
        if self.op_type != "Conv":
            rows = x.reshape(-1, x.shape[-1])
            chosen = _sample(len(rows), limit * (x.shape[0] if x.ndim > 2 else 1), rng)
            if device.is_device_array(x):
                chosen = device.cupy_module().asarray(chosen)
            return rows[chosen][:, None, :]
        batch, channels, height, width = x.shape
        kh, kw = self.shape[2:]
        top, left, _, _ = self._padding((height, width), (kh, kw))
        out_h, out_w = self._output_size(x.shape)
        chosen = _sample(out_h * out_w, limit, rng)
        taps_y = np.repeat(np.arange(kh) * self.dilations[0], kw)[:, None]
        taps_x = np.tile(np.arange(kw) * self.dilations[1], kh)[:, None]
        ys = (chosen // out_w * self.strides[0] - top)[None, :] + taps_y  # taps x positions, unpadded coordinates
        xs = (chosen % out_w * self.strides[1] - left)[None, :] + taps_x
        inside = ((ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)).astype(np.float32)
        ys, xs = np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)
        if device.is_device_array(x):
            ys, xs, inside = (device.cupy_module().asarray(a) for a in (ys, xs, inside))
        values = x[:, :, ys, xs] * inside  # batch, channels, taps, positions
        return values.transpose(0, 3, 1, 2).reshape(batch * len(chosen), self.groups, self.columns)

    def _padding(self, size: Sequence[int], kernel: Sequence[int]) -> tuple[int, int, int, int]:
        if self.auto_pad in ("NOTSET", "VALID"):
            return self.pads if self.auto_pad == "NOTSET" else (0, 0, 0, 0)
        totals = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                  for n, s, k, d in zip(size, self.strides, kernel, self.dilations)]
        first = [t // 2 if self.auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        return first[0], first[1], totals[0] - first[0], totals[1] - first[1]


def _sample(total: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    if total <= limit:
        return np.arange(total)
    return np.sort(rng.choice(total, limit, replace=False))


def weighted_layers(model: onnx.ModelProto, names: Sequence[str] | None = None) -> list[WeightedLayer]:
    """Every 2-D Conv, Gemm and MatMul of ``model`` whose weight is a constant (optionally only the nodes
    in ``names``): the layers whose INT8 weights calibkit rounds. Other layouts (1-D/3-D convolutions,
    transposed inputs, ConvTranspose) keep ONNX Runtime's round-to-nearest weights."""
    constants = constant_values(model)
    wanted = set(names) if names is not None else None
    consumers = GraphIndex(model.graph).consumers
    layers = []
    for node in model.graph.node:
        if wanted is not None and node.name not in wanted or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = tuple(constants[node.input[1]].dims)
        attrs = attributes(node)
        if node.op_type == "Conv" and len(shape) == 4:
            layers.append(WeightedLayer(
                node.name, "Conv", node.input[0], node.input[1], shape, 0, _bias(node, 2, constants),
                int(attrs.get("group", 1)), tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("pads", (0,) * 4)),
                tuple(attrs.get("dilations", (1, 1))), str(attrs.get("auto_pad", "NOTSET") or "NOTSET")))
        elif node.op_type == "Gemm" and len(shape) == 2 and not attrs.get("transA", 0):
            axis = 0 if attrs.get("transB", 0) else 1
            layers.append(WeightedLayer(node.name, "Gemm", node.input[0], node.input[1], shape, axis,
                                        _bias(node, 2, constants)))
        elif node.op_type == "MatMul" and len(shape) == 2 and node.input[0] not in constants:
            layers.append(WeightedLayer(node.name, "MatMul", node.input[0], node.input[1], shape, 1,
                                        _following_bias(node, shape[1], consumers, constants)))
    return layers


def _bias(node: onnx.NodeProto, index: int, constants: Mapping[str, onnx.TensorProto]) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] in constants else None


def _following_bias(node: onnx.NodeProto, width: int, consumers: Mapping[str, list[onnx.NodeProto]],
                    constants: Mapping[str, onnx.TensorProto]) -> str | None:
    """The constant of the one Add that reads a MatMul's output, when it is a bias over its last axis."""
    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    other = next((name for name in readers[0].input if name != node.output[0]), None)
    if other not in constants:
        return None
    dims = [d for d in constants[other].dims if d != 1]
    return other if dims == [width] and list(constants[other].dims)[-1] == width else None


# Sampled input vectors are buffered and folded into the sums about this many values at a time: one
# large matrix product instead of one per image (a classifier's input gives a single vector per image).
# Per layer, so a wide detector's 141 layers buffer at most about 150 MB between folds.
FOLD_VALUES = 1 << 18

# The second-moment sums of all layers together stay within this many bytes (float64, ``columns^2`` per
# layer and group): a 3x3 convolution over 320 channels alone needs 66 MB. Layers are given theirs in
# graph order while it lasts; those after keep round-to-nearest weights (the mean still corrects bias).
# At 128 images YOLOv8n needs at most 221 MB and EfficientNet-Lite0 104 MB; the stress detector 6.5 GB.
GRAM_BYTES = 256 << 20


@dataclass
class InputMoments:
    """Sums of ``x`` (and of ``x x^T`` unless ``gram`` is None) over the input vectors of one layer, per
    group. Vectors are buffered and folded in :data:`FOLD_VALUES` at a time; every reader folds first."""

    total: np.ndarray
    gram: np.ndarray | None = None
    _count: int = 0
    _pending: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, vectors: np.ndarray) -> None:
        """Add ``[samples, groups, columns]`` input vectors."""
        self._pending.append(vectors)
        if sum(len(v) for v in self._pending) * vectors[0].size >= FOLD_VALUES:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        xp = device.cupy_module() if device.is_device_array(self._pending[0]) else np
        vectors = xp.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        # New arrays rather than in-place sums: moments returned by a Ray task arrive read-only.
        if self.gram is not None:
            by_group = vectors.transpose(1, 2, 0)
            self.gram = self.gram + device.to_host(xp.matmul(by_group, by_group.transpose(0, 2, 1)))
        self.total = self.total + device.to_host(vectors.sum(axis=0))
        self._count += vectors.shape[0]
        self._pending = []

    @property
    def count(self) -> int:
        """Input vectors seen."""
        self._fold()
        return self._count

    @property
    def second(self) -> np.ndarray | None:
        """``E[x x^T]`` per group, where it was accumulated."""
        self._fold()
        return None if self.gram is None else self.gram / max(self._count, 1)

    @property
    def mean(self) -> np.ndarray:
        """``E[x]`` per group."""
        self._fold()
        return self.total / max(self._count, 1)


@dataclass
class MomentCollector:
    """Accumulates :class:`InputMoments` of ``layers`` over the first ``images`` images it is given.

    Each layer gets about :data:`SAMPLES_PER_COLUMN` input vectors per column over those images. Second
    moments are accumulated only for layers that can reach ``min_samples_per_column`` (what weight
    rounding needs): a layer too wide for its positions and images would cost ``columns^2`` per vector
    for an estimate nothing uses, so it gets the mean alone (bias correction needs no more). The same
    holds for the layers that would take the second moments past ``gram_bytes`` in all.
    Positions are drawn from one generator seeded with ``seed``, layer after layer, in image order, so
    the same images in the same order give the same moments. A pass that hands the layer inputs over a
    segment of the graph at a time (:mod:`calibkit.stats.segments`) calls :meth:`use_layer_streams`
    first: each layer then draws from a generator of its own (``seed`` and its index), in any order.
    """

    layers: Sequence[WeightedLayer]
    images: int = MOMENT_IMAGES
    min_samples_per_column: int = 8
    seed: int = 0
    seen: int = 0
    moments: dict[str, InputMoments] = field(default_factory=dict)
    gram_bytes: int = GRAM_BYTES

    def __post_init__(self) -> None:
        self._rngs = [np.random.default_rng(self.seed)] * len(self.layers)  # one generator, shared
        self._positions: dict[str, int] = {}

    def use_layer_streams(self) -> None:
        """One generator per layer, so that layers may be folded in any order (before any image)."""
        if self.seen or self.moments:
            raise RuntimeError("layer streams must be chosen before the first image")
        self._rngs = [np.random.default_rng([self.seed, index]) for index in range(len(self.layers))]

    @property
    def max_bytes(self) -> int:
        """The most these moments hold: the second-moment sums and each layer's buffered input vectors."""
        return self.gram_bytes + len(self.layers) * FOLD_VALUES * 4

    @property
    def inputs(self) -> list[str]:
        """The tensors :meth:`update` needs."""
        return list(dict.fromkeys(layer.input for layer in self.layers))

    @property
    def done(self) -> bool:
        return self.seen >= self.images

    def update(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Fold one batch's layer inputs (by tensor name; the batch is the first axis) in."""
        if not self.done:
            first = tensors[self.layers[0].input] if self.layers else None
            self.add(tensors)
            self.count(first.shape[0] if first is not None and first.ndim > 1 else 1)

    def add(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Fold in the inputs in ``tensors`` of the layers that read them: part of a batch, which
        :meth:`count` closes."""
        if self.done:
            return
        for index, layer in enumerate(self.layers):
            if layer.input not in tensors:
                continue
            x = tensors[layer.input]
            x = x.astype(np.float32, copy=False) if device.is_device_array(x) else np.asarray(x, dtype=np.float32)
            if layer.node not in self.moments:
                self._start(layer, x.shape)
            self.moments[layer.node].add(layer.patches(x, self._rngs[index], self._positions[layer.node]))

    def count(self, images: int) -> None:
        """Close a batch of ``images`` whose layer inputs :meth:`add` has folded in."""
        self.seen += images

    def _start(self, layer: WeightedLayer, shape: Sequence[int]) -> None:
        available = layer.positions(shape)
        wanted = -(-SAMPLES_PER_COLUMN * layer.columns // self.images)
        self._positions[layer.node] = min(max(wanted, MIN_POSITIONS), MAX_POSITIONS, available)
        enough = self._positions[layer.node] * self.images >= self.min_samples_per_column * layer.columns
        size = layer.groups * layer.columns * layer.columns * 8
        held = sum(m.gram.nbytes for m in self.moments.values() if m.gram is not None)
        gram = enough and held + size <= self.gram_bytes
        self.moments[layer.node] = InputMoments(
            np.zeros((layer.groups, layer.columns)),
            np.zeros((layer.groups, layer.columns, layer.columns)) if gram else None)
