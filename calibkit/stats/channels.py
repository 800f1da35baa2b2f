"""Per-channel maxima of a few activations: what depthwise equalisation (:mod:`calibkit.graph.equalize`) needs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from calibkit.backends import load
from calibkit.data.images import ImageItem
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.progress import progress


def channel_absmax(model: onnx.ModelProto, model_path: Path, items: Sequence[ImageItem], preprocess: Preprocess,
                   names: Sequence[str], skip_bad: bool = False) -> dict[str, np.ndarray]:
    """Largest |x| per channel (axis 1) of each tensor in ``names`` over ``items``, one image at a time;
    memory is one vector per tensor."""
    session = load(Path(model_path), "fp32", "ort-cpu", expose=list(names), model=model, spinning=False)
    peaks: dict[str, np.ndarray] = {}
    with progress(len(items), "channel ranges") as bar:
        for batch in iter_batches(items, preprocess, 1, skip_bad=skip_bad):
            outputs = session.run(batch.array, list(names))
            for name in names:
                values = outputs[name]
                axes = tuple(axis for axis in range(values.ndim) if axis != 1)
                peak = np.maximum(np.nanmax(values, axis=axes), -np.nanmin(values, axis=axes)).astype(np.float64)
                peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
            bar.update(len(batch.items))
    return peaks
