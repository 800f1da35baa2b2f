"""The INT8 weights a Q/DQ model ships: rounded and bias-corrected on the calibration data.

Weights are quantized symmetric per output channel with scale ``max|w| / 127`` (what TensorRT and
ONNX Runtime's quantizer use, so the scales of a refined model are the ones they would write). What
calibkit chooses is the integer each weight rounds to, and a float correction of each bias:

* ``nearest``: every weight to its nearest level, as every quantizer does by default.
* ``gptq`` (default): the rounding of Frantar et al., 2023 ("GPTQ"), which quantizes a layer's input
  columns one at a time and spreads each one's rounding error over the columns not yet quantized, in
  the proportions that minimise the layer's output error ``tr(dW H dW^T)`` for the input second moments
  ``H`` measured on the calibration images (:mod:`calibkit.stats.moments`). On EfficientNet-Lite0 this
  error drops by 4-30x per layer against round-to-nearest. A layer whose ``H`` rests on fewer than
  :data:`MIN_SAMPLES_PER_COLUMN` samples per column keeps round-to-nearest: there GPTQ fits the calibration
  images rather than the data (EfficientNet-Lite0's classifier, 1280 columns and one sample per image,
  lost agreement with FP32 that way).
* bias correction (on by default): whatever the rounding, the output of channel ``o`` moves on average
  by ``dW[o] . E[x]``; subtracting that from the float bias removes the shift (the empirical bias
  correction of Nagel et al., 2019, which NNCF applies by default).

Add a rounding with ``@register_rounding("name")``: a function ``(weights, second, scales) -> levels``
over ``[groups, rows, columns]`` arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.errors import CalibkitError
from calibkit.fileio import read_npz, write_npz_atomic
from calibkit.graph.onnx_model import constant_values
from calibkit.stats.moments import InputMoments, WeightedLayer

LEVELS = 127

# GPTQ needs H estimated from at least this many input vectors per column (see the module docstring).
MIN_SAMPLES_PER_COLUMN = 8

# Added to H's diagonal, as a share of its mean: keeps H invertible where inputs are collinear (GPTQ's value).
DAMPING = 0.01

# Version of the weights.npz layout.
WEIGHTS_FORMAT = 1

RoundingFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_ROUNDINGS: dict[str, RoundingFn] = {}


def register_rounding(name: str) -> Callable[[RoundingFn], RoundingFn]:
    """Decorator: register ``fn(weights, second, scales) -> levels`` as weight rounding ``name``.
    ``weights`` is ``[groups, rows, columns]`` (float64), ``second`` ``[groups, columns, columns]`` (the
    input's ``E[x x^T]``), ``scales`` ``[groups, rows]``; the result holds integers in [-127, 127]."""

    def decorate(fn: RoundingFn) -> RoundingFn:
        _ROUNDINGS[name] = fn
        return fn

    return decorate


def available_roundings() -> list[str]:
    return sorted(_ROUNDINGS)


def check_rounding(name: str) -> str:
    """``name`` if it is a registered rounding, else one error line listing them."""
    if name not in _ROUNDINGS:
        raise CalibkitError(f"unknown weight rounding {name!r}; available: {', '.join(available_roundings())}")
    return name


@register_rounding("nearest")
def nearest(weights: np.ndarray, second: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.round(weights / scales[..., None]), -LEVELS, LEVELS)


@register_rounding("gptq")
def gptq(weights: np.ndarray, second: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """GPTQ over every group at once: columns in order of decreasing input energy ("act order")."""
    weights = weights.astype(np.float64).copy()
    second = second.astype(np.float64).copy()
    groups, _, columns = weights.shape
    diagonal = np.diagonal(second, axis1=1, axis2=2).copy()
    dead = diagonal <= 0
    second[:, np.arange(columns), np.arange(columns)] += np.where(dead, 1.0, 0.0)
    weights[np.broadcast_to(dead[:, None, :], weights.shape)] = 0.0
    order = np.argsort(-diagonal, axis=1, kind="stable")
    weights = np.take_along_axis(weights, order[:, None, :], axis=2)
    second = np.take_along_axis(np.take_along_axis(second, order[:, :, None], axis=1), order[:, None, :], axis=2)
    mean_diagonal = np.diagonal(second, axis1=1, axis2=2).mean(axis=1)
    second[:, np.arange(columns), np.arange(columns)] += DAMPING * mean_diagonal[:, None]
    upper = np.linalg.cholesky(np.linalg.inv(second)).transpose(0, 2, 1)
    levels = np.empty_like(weights)
    step = scales
    for j in range(columns):
        column = weights[:, :, j]
        levels[:, :, j] = np.clip(np.round(column / step), -LEVELS, LEVELS)
        error = (column - levels[:, :, j] * step) / upper[:, j, j][:, None]
        weights[:, :, j + 1:] -= error[:, :, None] * upper[:, None, j, j + 1:]
    restored = np.empty_like(levels)
    np.put_along_axis(restored, np.broadcast_to(order[:, None, :], levels.shape), levels, axis=2)
    return restored


@dataclass
class LayerWeights:
    """One layer's chosen INT8 weight levels (``None`` where they are round-to-nearest) and corrected bias."""

    node: str
    weight: str
    levels: np.ndarray | None
    scales: np.ndarray
    bias: str | None = None
    corrected_bias: np.ndarray | None = None


@dataclass
class RefinedWeights:
    """Weight levels and bias corrections of a run's calibrated graph, by node; the same for every
    calibrator of the run (they depend on the weights and the data, not on activation ranges)."""

    rounding: str
    bias_correction: bool
    layers: dict[str, LayerWeights] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for provenance and the report."""
        rounded = sum(layer.levels is not None for layer in self.layers.values())
        corrected = sum(layer.corrected_bias is not None for layer in self.layers.values())
        parts = [f"{self.rounding} rounding on {rounded} of {len(self.layers)} weighted layers"
                 if self.rounding != "nearest" else "round-to-nearest weights"]
        parts.append(f"bias correction on {corrected}" if self.bias_correction else "no bias correction")
        return "; ".join(parts)

    def save(self, path: Path) -> Path:
        """Write an ``.npz`` that :meth:`load` reads back (atomically)."""
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for index, layer in enumerate(self.layers.values()):
            arrays[f"s{index}"] = layer.scales
            if layer.levels is not None:
                arrays[f"w{index}"] = layer.levels
            if layer.corrected_bias is not None:
                arrays[f"b{index}"] = layer.corrected_bias
            entries.append({"node": layer.node, "weight": layer.weight, "bias": layer.bias})
        meta = {"format": WEIGHTS_FORMAT, "rounding": self.rounding, "bias_correction": self.bias_correction,
                "layers": entries}
        return write_npz_atomic(Path(path), arrays, meta)

    @classmethod
    def load(cls, path: Path) -> "RefinedWeights":
        arrays, meta = read_npz(path)
        if meta.get("format") != WEIGHTS_FORMAT:
            raise CalibkitError(f"{path}: weights written by another calibkit version; run calibkit calibrate again")
        layers = {}
        for index, entry in enumerate(meta["layers"]):
            layers[entry["node"]] = LayerWeights(entry["node"], entry["weight"], arrays.get(f"w{index}"),
                                                 arrays[f"s{index}"], entry["bias"], arrays.get(f"b{index}"))
        return cls(meta["rounding"], meta["bias_correction"], layers)


def refine_weights(model: onnx.ModelProto, layers: Sequence[WeightedLayer], moments: Mapping[str, InputMoments],
                   rounding: str = "gptq", bias_correction: bool = True) -> RefinedWeights:
    """Choose the INT8 weights of ``layers`` (see the module docstring). A layer without moments keeps
    round-to-nearest and no bias correction."""
    round_fn = _ROUNDINGS[check_rounding(rounding)]
    constants = constant_values(model)
    refined = RefinedWeights(rounding, bias_correction)
    for layer in layers:
        weight = numpy_helper.to_array(constants[layer.weight]).astype(np.float64)
        matrices = layer.matrices(weight)
        peaks = np.abs(matrices).max(axis=2)
        scales = np.where(peaks > 0, peaks / LEVELS, 1.0).astype(np.float32)
        found = moments.get(layer.node)
        second = found.second if found is not None else None
        use = round_fn if second is not None and found.count >= MIN_SAMPLES_PER_COLUMN * layer.columns else nearest
        levels = use(matrices, second, scales.astype(np.float64))
        corrected = None
        if bias_correction and found is not None and layer.bias is not None:
            bias = numpy_helper.to_array(constants[layer.bias]).astype(np.float64)
            error = levels * scales[..., None] - matrices
            shift = np.einsum("grc,gc->gr", error, found.mean).reshape(-1)
            if shift.size == bias.size:
                corrected = (bias - shift.reshape(bias.shape)).astype(np.float32)
        refined.layers[layer.node] = LayerWeights(
            layer.node, layer.weight,
            layer.weight_from(levels).astype(np.int8) if use is not nearest else None,
            scales.reshape(-1), layer.bias, corrected)
    return refined
