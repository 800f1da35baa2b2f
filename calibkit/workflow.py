"""The calibration chain as plain functions, shared by the CLI and notebooks.

pick images -> collect statistics once -> every calibrator -> cache + JSON per calibrator.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from calibkit.artifacts.ranges_json import write_ranges
from calibkit.artifacts.trt_cache import DEFAULT_TRT_VERSION, write_cache
from calibkit.calib.registry import Calibrator, TensorRange, compute_ranges, parse_methods
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.preprocess import Preprocess, fit_to_model, get_preset
from calibkit.fileio import ensure_writable_dir, write_text_atomic
from calibkit.onnx_model import image_input, load_model
from calibkit.samplers.registry import sample
from calibkit.stats.collect import CollectedStats, collect_statistics


@dataclass
class CalibrationRun:
    """What one ``calibrate`` produced: ranges per calibrator label and where files went."""

    out: Path
    model: Path
    stats: CollectedStats
    ranges: dict[str, dict[str, TensorRange]]
    calibrators: dict[str, Calibrator]
    chosen: list[ImageItem]
    timings: dict[str, float] = field(default_factory=dict)

    def cache_path(self, label: str) -> Path:
        return self.out / f"{label}.cache"

    def json_path(self, label: str) -> Path:
        return self.out / f"{label}.json"


def model_preprocess(
    model_path: Path, preprocess: Preprocess | str = "imagenet-tf", size: tuple[int, int] | None = None
) -> Preprocess:
    """The preprocessing to feed ``model_path``: a preset or explicit settings fitted to its input."""
    spec = get_preset(preprocess) if isinstance(preprocess, str) else preprocess
    info = image_input(load_model(model_path), model_path)
    return fit_to_model(spec, info.height, info.width, info.layout, str(model_path), size)


def calibrate(
    model: Path,
    images: Path | Sequence[ImageItem],
    out: Path,
    methods: str = "entropy2",
    samples: int | None = 500,
    sampler: str = "random",
    seed: int = 0,
    preprocess: Preprocess | str = "imagenet-tf",
    batch_size: int = 8,
    skip_bad: bool = False,
    labels: Path | None = None,
    trt_version: int = DEFAULT_TRT_VERSION,
) -> CalibrationRun:
    """Calibrate ``model`` on a sample of ``images`` with every method in ``methods``; write to ``out``."""
    model, out = Path(model), Path(out)
    calibrators = {c.label: c for c in parse_methods(methods)}
    ensure_writable_dir(out)
    spec = model_preprocess(model, preprocess)
    pool = discover_images(Path(images), labels) if isinstance(images, (str, Path)) else list(images)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    chosen = sample(pool, samples, sampler, seed)
    timings["sampling_s"] = time.perf_counter() - start
    stats = collect_statistics(model, chosen, spec, batch_size=batch_size, skip_bad=skip_bad)
    stats.provenance.update({"sampler": sampler, "seed": seed, "pool_size": len(pool)})
    timings["statistics_s"] = stats.seconds
    stats.save(out / "stats.npz")
    write_text_atomic(out / "images.txt", "".join(f"{p}\n" for p in stats.images))
    ranges = {}
    for label, calibrator in calibrators.items():
        start = time.perf_counter()
        ranges[label] = compute_ranges(stats.tensors, calibrator)
        timings[f"{label}_s"] = time.perf_counter() - start
        scales = {name: r.scale for name, r in ranges[label].items()}
        write_cache(out / f"{label}.cache", scales, calibrator.info.trt_algorithm, trt_version)
        write_ranges(out / f"{label}.json", ranges[label], calibrator, stats.provenance)
    summary = {"model": str(model), "methods": list(calibrators), "timings": timings, **stats.provenance}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return CalibrationRun(out, model, stats, ranges, calibrators, chosen, timings)
