"""The calibration chain: pick images -> collect statistics once -> every calibrator -> cache + JSON +
Q/DQ models per calibrator, and what TensorRT-RTX builds of them."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import onnx

from calibkit.artifacts.method_files import MethodFiles, export_targets, qdq_paths, write_all
from calibkit.artifacts.placement import quantized_inputs, quantized_nodes
from calibkit.artifacts.qdq import resolve_exclusions
from calibkit.artifacts.trt_cache import DEFAULT_TRT_VERSION
from calibkit.backends import require
from calibkit.backends.base import backend_info
from calibkit.calib.registry import (Calibrator, TensorRange, compute_ranges, parse_methods, warn_clipping,
                                    with_full_range)
from calibkit.calib.weights import MIN_SAMPLES_PER_COLUMN, RefinedWeights, check_rounding, refine_weights
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.preprocess import Preprocess, fit_to_model, get_preset, metadata_size, preset_for
from calibkit.distributed import check_backend, sharded_statistics
from calibkit.engine.summary import EngineSettings, reproducible
from calibkit.equalize import equalize, tensors_to_measure
from calibkit.fileio import atomic_path, ensure_writable_dir, write_text_atomic
from calibkit.memory import peak_rss_gb, trim_heap
from calibkit.normalize import Normalized, check_equivalent, normalized_model
from calibkit.notices import recording, warned_so_far
from calibkit.onnx_model import file_sha256, image_input, load_model, model_metadata
from calibkit.progress import progress
from calibkit.run_folder import SUMMARY, TIMINGS, check_out_folder, run_transaction
from calibkit.samplers.coverage import coverage_report
from calibkit.samplers.embedding import readable_embeddings, thumbnail_embeddings
from calibkit.samplers.registry import sample
from calibkit.samplers.sufficiency import Reference, sufficiency
from calibkit.stats import MEMORY_BUDGET
from calibkit.stats.channels import channel_absmax
from calibkit.stats.collect import CollectedStats, collect_statistics
from calibkit.stats.histogram import DEFAULT_BINS
from calibkit.stats.moments import MOMENT_IMAGES, MomentCollector, weighted_layers
from calibkit.workflow.candidates import CALIBRATED_GRAPH, RUN_WEIGHTS, fp16_candidate


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
    sufficiency: dict | None = None
    coverage: dict | None = None
    engine: dict | None = None
    warnings: list[str] = field(default_factory=list)



# What TensorRT-RTX built of a run's models (:mod:`calibkit.engine`).
ENGINE_CHECK = "engine-check.json"

# Calibration images (evenly spread over the chosen set) that measure per-channel maxima for equalisation.
EQUALIZATION_IMAGES = 32

# The sufficiency check's cost limit in histogram scans per tensor (registry costs times draws): the
# cheapest calibrators are checked first; MSE (110 scans a draw, 30 draws at 1000 images) is named as left
# out rather than costing more than every other calibrator together.
SUFFICIENCY_MAX_COST = 1000


def model_preprocess(
    model_path: Path, preprocess: Preprocess | str | None = None, size: tuple[int, int] | None = None
) -> Preprocess:
    """The preprocessing to feed ``model_path``: a preset (``None``: the one its exporter's metadata
    implies, :func:`~calibkit.data.preprocess.preset_for`) or explicit settings, fitted to its input (a
    dynamic one at ``size``, else at the size the exporter recorded)."""
    proto = load_model(model_path)
    metadata = model_metadata(proto)
    spec = preprocess if isinstance(preprocess, Preprocess) else get_preset(preprocess or preset_for(metadata))
    info = image_input(proto, model_path)
    dynamic = info.height is None or info.width is None
    return fit_to_model(spec, info.height, info.width, info.layout, str(model_path),
                        size or (metadata_size(metadata) if dynamic else None))


def model_preset(model_path: Path) -> Preprocess:
    """The preset ``model_path``'s exporter metadata implies (before any flag overrides it)."""
    return get_preset(preset_for(model_metadata(load_model(model_path))))


def input_shape(preprocess: Preprocess) -> tuple[int, int, int]:
    """Shape of one preprocessed image without the batch axis."""
    return preprocess.input_shape()


def check_shape(model: Path, original: onnx.ModelProto, preprocess: Preprocess) -> tuple[int, ...]:
    """Input shape (batch included) on which a rewritten graph is checked against ``original``."""
    return (image_input(original, model).batch or 1, *input_shape(preprocess))


def normalized_graph(model: Path, original: onnx.ModelProto, preprocess: Preprocess) -> Normalized:
    """The graph calibration runs on, checked against the model's FP32 outputs at ``preprocess``'s size."""
    graph = normalized_model(model)
    check_equivalent(original, graph, check_shape(model, original, preprocess), model)
    return graph


def equalized_graph(model: Path, original: onnx.ModelProto, graph: Normalized, chosen: Sequence[ImageItem],
                    preprocess: Preprocess, out: Path, skip_bad: bool = False) -> tuple[Path, str]:
    """The graph to calibrate, ``out/model.calibrated.onnx`` where equalising changed it (checked against
    the model's FP32 outputs) else ``model``, and a line saying what was equalised."""
    targets = tensors_to_measure(graph.model)
    (out / CALIBRATED_GRAPH).unlink(missing_ok=True)
    if not targets:
        return model, "no depthwise convolution with an input unbounded by a Clip"
    subset = list(chosen)[:: max(1, len(chosen) // EQUALIZATION_IMAGES)][:EQUALIZATION_IMAGES]
    peaks = channel_absmax(graph.model, model, subset, preprocess, targets, skip_bad)
    equalized, done = equalize(graph.model, peaks)
    if not done.scales:
        return model, f"{len(targets)} depthwise input(s) already even"
    check_equivalent(original, Normalized(equalized, graph.opset), check_shape(model, original, preprocess),
                     out / CALIBRATED_GRAPH)
    with atomic_path(out / CALIBRATED_GRAPH) as tmp:
        onnx.save(equalized, str(tmp))
    return out / CALIBRATED_GRAPH, done.summary()


# Fewer calibration images than this get a warning: ranges from a handful of images rarely hold for others.
FEW_IMAGES = 100


@recording
def calibrate(
    model: Path,
    images: Path | Sequence[ImageItem],
    out: Path,
    methods: str = "entropy2",
    samples: int | None = 500,
    sampler: str = "random",
    seed: int = 0,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
    skip_bad: bool = False,
    labels: Path | None = None,
    trt_version: int = DEFAULT_TRT_VERSION,
    exclude: Sequence[str] = (),
    shard_size: int | None = 50,
    report_coverage: bool = True,
    equalize_depthwise: bool = True,
    weight_rounding: str = "gptq",
    bias_correction: bool = True,
    backend: str = "ort-cpu",
    ray: str | None = None,
    engines: EngineSettings | None = None,
    force: bool = False,
    memory_budget: int = MEMORY_BUDGET,
) -> CalibrationRun:
    """Calibrate ``model`` on a sample of ``images`` with every method in ``methods``; write to ``out``.

    Per method: ``<label>.cache`` (TensorRT), ``<label>.json``, ``<label>.qdq.onnx`` (TensorRT target)
    and ``<label>.ort.onnx`` (ONNX Runtime CPU target). Also ``stats.npz``, ``images.txt``, ``summary.json``.
    ``batch_size`` defaults to the backend's statistics batch (``BackendInfo.stats_batch``). With
    ``equalize_depthwise``, uneven depthwise inputs are equalised first (:mod:`calibkit.equalize`) and the
    FP32 graph that was calibrated is kept as ``model.calibrated.onnx``, which every export of the run uses.
    ``weight_rounding`` and ``bias_correction`` choose the INT8 weights every Q/DQ model of the run ships
    (:mod:`calibkit.calib.weights`), kept as ``weights.npz``. ``backend="ort-cuda"`` runs the statistics
    pass on the GPU (:mod:`calibkit.stats.device`); ``ray`` (an address, or ``local``) splits it into Ray
    tasks (:mod:`calibkit.distributed`), with the same artefacts. ``engines`` (resolved settings) builds
    the FP32, FP16 and every INT8 Q/DQ model with TensorRT-RTX afterwards (:mod:`calibkit.engine`) and keeps
    what the builder made of them as ``engine-check.json``. The run is written beside ``out`` and moved in
    only once it has succeeded (:func:`calibkit.run_folder.run_transaction`): an earlier run there stays whole
    after any failure or signal; ``force`` writes into a folder holding files calibkit did not write.
    """
    began = time.perf_counter()
    model, out = Path(model), Path(out)
    calibrators = {c.label: c for c in parse_methods(methods)}
    check_rounding(weight_rounding)
    check_backend(ray, backend)
    require(backend, lambda info: info.stats_batch is not None, "the statistics pass")
    check_out_folder(out, force)
    ensure_writable_dir(out.parent)
    spec = model_preprocess(model, preprocess)
    original = load_model(model)
    graph = normalized_graph(model, original, spec)
    resolve_exclusions(graph.model, exclude)
    pool = discover_images(Path(images), labels) if isinstance(images, (str, Path)) else list(images)
    timings: dict[str, float] = {"checks_s": time.perf_counter() - began}
    start = time.perf_counter()
    if skip_bad and samples and samples < len(pool):
        pool, _ = readable_embeddings(pool, skip_bad=True)
    chosen = sample(pool, samples, sampler, seed)
    timings["sampling_s"] = time.perf_counter() - start
    if len(chosen) < FEW_IMAGES:
        warnings.warn(f"calibrating on {len(chosen)} image(s): ranges from so few rarely hold for other images "
                      "(TensorRT suggests about 500); pass more images", stacklevel=2)
    # written into a staging folder beside ``final``, moved in when every file is written
    final = out
    with run_transaction(final, force) as out:
        coverage = None
        if report_coverage and len(chosen) < len(pool):
            start = time.perf_counter()
            coverage = coverage_report(pool, chosen, thumbnail_embeddings(pool))
            timings["coverage_s"] = time.perf_counter() - start
        source, equalized = model, "off"
        if equalize_depthwise:
            start = time.perf_counter()
            source, equalized = equalized_graph(model, original, graph, chosen, spec, out, skip_bad)
            timings["equalization_s"] = time.perf_counter() - start
        trim_heap()  # what the checks and equalisation freed goes back before the statistics pass
        calibrated = normalized_model(source).model
        layers = weighted_layers(calibrated, quantized_nodes(calibrated))
        del calibrated  # not held through the pass: a second copy of a large model's weights
        moments = (MomentCollector(layers, min(MOMENT_IMAGES, len(chosen)), MIN_SAMPLES_PER_COLUMN, seed=seed)
                   if weight_rounding != "nearest" or bias_correction else None)
        batch = batch_size or backend_info(backend).stats_batch
        if ray:
            stats = sharded_statistics(source, chosen, spec, batch, DEFAULT_BINS, skip_bad, shard_size or 50, moments, ray,
                                       memory_budget)
        else:
            stats = collect_statistics(source, chosen, spec, batch_size=batch, skip_bad=skip_bad, shard_size=shard_size,
                                       moments=moments, backend=backend, memory_budget=memory_budget)
        timings["statistics_s"] = stats.seconds
        timings["statistics_graph_segments"] = stats.segments
        trim_heap()  # the pass's sessions are gone: what they freed goes back before the exports
        start = time.perf_counter()
        calibrated = normalized_model(source).model
        weights = refine_weights(calibrated, layers, moments.moments if moments else {}, weight_rounding, bias_correction)
        weights.save(out / RUN_WEIGHTS)
        timings["weights_s"] = time.perf_counter() - start
        stats.provenance.update({"model": model.name, "model_sha256": file_sha256(model), "calibrated graph": source.name,
                                 "sampler": sampler, "seed": seed, "pool_size": len(pool),
                                 "graph normalisation": graph.summary(), "depthwise equalisation": equalized,
                                 "weights": weights.summary(),
                                 "weights_file": {"file": RUN_WEIGHTS, "sha256": file_sha256(out / RUN_WEIGHTS)}})
        # what every file of the run records, so a folder mixing two runs' files is refused when read
        stats.provenance["run_id"] = hashlib.sha256(json.dumps(
            [stats.provenance, list(calibrators), list(exclude), trt_version], sort_keys=True).encode()).hexdigest()[:16]
        stats.save(out / "stats.npz")
        write_text_atomic(out / "images.txt", "".join(f"{p}\n" for p in stats.images))
        ranges, references = {}, {}
        quantized = quantized_inputs(calibrated)
        model_inputs = [i.name for i in calibrated.graph.input]
        start = time.perf_counter()
        for label, calibrator in calibrators.items():
            computed = compute_ranges(stats.tensors, calibrator)
            references[label] = Reference.of(computed)
            ranges[label] = with_full_range(computed, model_inputs)
            warn_clipping(label, ranges[label], quantized)
        timings["ranges_s"] = time.perf_counter() - start
        jobs = [MethodFiles(source, out, calibrator, ranges[label], stats.provenance, trt_version, tuple(exclude), weights)
                for label, calibrator in calibrators.items()]

        def check_sufficiency() -> dict | None:
            if len(stats.shards) < 2:
                if shard_size:
                    warnings.warn(f"sufficiency check skipped: {len(chosen)} image(s) make fewer than two shards "
                                  f"of {shard_size}, so there is no subset to compare the ranges with", stacklevel=2)
                return None
            started = time.perf_counter()
            result = sufficiency(stats.shards, stats.shard_images, list(calibrators.values()),
                                 max_cost=SUFFICIENCY_MAX_COST, references=references)
            timings["sufficiency_s"] = time.perf_counter() - started
            return result

        start = time.perf_counter()
        with progress(len(jobs), "ranges and Q/DQ exports", unit="method") as bar:
            enough = write_all(jobs, check_sufficiency, lambda label: bar.update(1))
        timings["export_s"] = time.perf_counter() - start
        engine, kept_float = None, []
        if engines is not None:
            start = time.perf_counter()
            engine, kept_float = checked_exports(model, out, spec, engines, source, ranges, exclude, weights)
            write_text_atomic(out / ENGINE_CHECK, json.dumps(reproducible(engine), indent=1) + "\n")
            timings["engine_check_s"] = time.perf_counter() - start
        timings["total_s"] = time.perf_counter() - began
        timings["peak_rss_gb"] = peak_rss_gb()
        summary = {"model": str(model), "methods": list(calibrators), "exclude": [*exclude, *kept_float],
                   "kept float for TensorRT": kept_float, **stats.provenance,
                   "coverage": coverage, "sufficiency": enough, "warnings": warned_so_far()}
        write_text_atomic(out / TIMINGS, json.dumps(timings, indent=1) + "\n")
        write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
        run = CalibrationRun(final, model, stats, ranges, calibrators, chosen, timings, enough, coverage, engine,
                             summary["warnings"])
    return run


def checked_exports(model: Path, out: Path, preprocess: Preprocess, settings: EngineSettings, source: Path,
                    ranges: Mapping[str, Mapping[str, TensorRange]], exclude: Sequence[str],
                    weights: RefinedWeights) -> tuple[dict, list[str]]:
    """What TensorRT-RTX builds of every INT8 export in ``out``; where the engine runs nodes calibkit
    quantized in float anyway (their Q/DQ would cost accuracy and buy no speed), the exports are written
    again with those nodes kept float and checked again. Returns the check and the nodes kept float."""
    built = [Candidate(f"int8 {label}", "int8", qdq_paths(out, label)["tensorrt"], calibrator=label) for label in ranges]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nodes are re-exported below; the second check warns of what stays
        engine = engine_check(model, built, preprocess, settings, out)
    kept = sorted({node for m in engine["models"] if m["precision"] == "int8" for node in m["fell_to_float"]})
    if not kept:
        return engine, []
    warnings.warn(f"TensorRT-RTX runs {len(kept)} node(s) calibkit quantized in float ({', '.join(kept[:6])}"
                  f"{' ...' if len(kept) > 6 else ''}): the Q/DQ models keep them float (--no-engine-check keeps "
                  "them quantized)", stacklevel=3)
    for label, table in ranges.items():
        export_targets(source, out, label, table, (*exclude, *kept), weights)
    engine = engine_check(model, built, preprocess, settings, out)
    engine["kept_float_for_tensorrt"] = kept
    return engine, kept


def engine_check(model: Path, candidates: Sequence[Candidate], preprocess: Preprocess,
                 settings: EngineSettings, out: Path) -> dict:
    """What TensorRT-RTX builds of the FP32 model, the FP16 model (exported into ``out`` when no candidate
    is FP16) and every candidate (:func:`calibkit.engine.summary.check_engines`); engines kept in ``out``
    with ``settings.write_engines``."""
    from calibkit.engine.check import EngineModel
    from calibkit.engine.summary import check_engines

    if not any(c.precision == "fp16" for c in candidates):
        candidates = [*candidates, fp16_candidate(model, out)]
    models = [EngineModel("fp32", "fp32", Path(model), "fp32")]
    models += [EngineModel(c.name, c.precision, c.model, c.calibrator or c.precision) for c in candidates]
    shape = check_shape(model, load_model(model), preprocess)
    return check_engines(models, shape, settings, Path(out))
