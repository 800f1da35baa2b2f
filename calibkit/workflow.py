"""The calibration chain as plain functions, shared by the CLI and notebooks.

pick images -> collect statistics once -> every calibrator -> cache + JSON + Q/DQ models per calibrator.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import onnx

from calibkit.artifacts.fp16 import export_fp16
from calibkit.artifacts.method_files import MethodFiles, export_targets, qdq_paths, write_all
from calibkit.artifacts.placement import quantized_inputs, quantized_nodes
from calibkit.artifacts.qdq import resolve_exclusions
from calibkit.artifacts.ranges_json import read_ranges
from calibkit.artifacts.trt_cache import DEFAULT_TRT_VERSION
from calibkit.backends import require
from calibkit.backends.base import backend_info
from calibkit.calib.registry import (Calibrator, TensorRange, compute_ranges, get_calibrator, parse_methods,
                                     warn_clipping)
from calibkit.calib.weights import MIN_SAMPLES_PER_COLUMN, RefinedWeights, check_rounding, refine_weights
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.preprocess import Preprocess, fit_to_model, get_preset
from calibkit.distributed import check_backend, sharded_statistics
from calibkit.engine.summary import EngineSettings, reproducible
from calibkit.errors import CalibkitError
from calibkit.equalize import equalize, tensors_to_measure
from calibkit.fileio import atomic_path, ensure_writable_dir, write_text_atomic
from calibkit.memory import peak_rss_gb, trim_heap
from calibkit.normalize import Normalized, check_equivalent, normalized_model
from calibkit.onnx_model import file_sha256, image_input, load_model, model_outputs
from calibkit.progress import progress
from calibkit.report.provenance import environment
from calibkit.run_folder import SUMMARY, clear_earlier_run
from calibkit.samplers.coverage import coverage_report
from calibkit.samplers.embedding import readable_embeddings, thumbnail_embeddings
from calibkit.samplers.registry import sample
from calibkit.samplers.sufficiency import Reference, sufficiency
from calibkit.stats.channels import channel_absmax
from calibkit.stats.collect import CollectedStats, collect_statistics
from calibkit.stats.histogram import DEFAULT_BINS
from calibkit.stats.moments import MOMENT_IMAGES, MomentCollector, weighted_layers
from calibkit.tasks import OutputInfo, Task, TaskContext, make_task


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


# The FP32 graph a run calibrated, when it differs from the user's (depthwise inputs equalised).
CALIBRATED_GRAPH = "model.calibrated.onnx"

# What TensorRT-RTX built of a run's models (:mod:`calibkit.engine`).
ENGINE_CHECK = "engine-check.json"

# A run's INT8 weight levels and corrected biases (:mod:`calibkit.calib.weights`), shared by its calibrators.
RUN_WEIGHTS = "weights.npz"

# Calibration images (evenly spread over the chosen set) that measure per-channel maxima for equalisation.
EQUALIZATION_IMAGES = 32

# The sufficiency check's time budget, as a share of the statistics pass: the cheapest calibrators are
# checked first, the costly ones (MSE) are named as left out rather than doubling a calibration's time.
SUFFICIENCY_BUDGET = 0.25


def check_made_from(model: Path, recorded: str | None, source: Path, noun: str) -> None:
    """Refuse ``source`` (a run or a ranges file) whose recorded model hash is not ``model``'s."""
    if recorded and recorded != file_sha256(Path(model)):
        raise CalibkitError(f"{source}: {noun} calibrated from a different model than {model} (sha256 "
                            f"{recorded[:12]}...); pass the model it was made from, or calibrate this one")


def check_run_matches(model: Path, run_dir: Path) -> None:
    """Refuse a run folder that is incomplete or was calibrated from another model file."""
    summary = Path(run_dir) / SUMMARY
    if not summary.is_file():
        raise CalibkitError(f"{run_dir}: no {SUMMARY}, so the calibration did not finish; run calibkit calibrate "
                            f"--out {run_dir} again")
    check_made_from(model, json.loads(summary.read_text(encoding="utf-8")).get("model_sha256"), run_dir, "run")


def run_exclusions(run_dir: Path) -> list[str]:
    """The ``--exclude`` patterns a run's Q/DQ models were exported with (none for runs that predate the
    record)."""
    return json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8")).get("exclude", [])


def method_label(text: str) -> str:
    """``percentile:99.99`` or ``percentile-99.99`` -> ``percentile-99.99`` (the run's file label)."""
    try:
        return get_calibrator(text).label
    except CalibkitError:
        return text


def int8_candidates(model: Path, run_dir: Path, labels: Sequence[str] | None = None,
                    exclude: Sequence[str] = (), out: Path | None = None) -> list[Candidate]:
    """One INT8 candidate per calibrator of ``run_dir``. Q/DQ models the run lacks, or that ``exclude``
    changes, are exported into ``out`` (default ``run_dir``: pass another folder to leave the run as it is)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    found = sorted(p.name[: -len(".cache")] for p in run_dir.glob("*.cache") if (run_dir / f"{p.stem}.json").is_file())
    if not found:
        raise CalibkitError(f"{run_dir}: no calibration JSON found; run calibkit calibrate --out {run_dir} first")
    check_run_matches(model, run_dir)
    chosen = [method_label(label) for label in labels] if labels else found
    missing = [label for label in chosen if label not in found]
    if missing:
        raise CalibkitError(f"{run_dir}: no ranges for {', '.join(missing)}; available: {', '.join(found)}")
    candidates = []
    source = run_graph(model, run_dir)
    weights = run_weights(run_dir)
    kept_float = tuple(dict.fromkeys([*run_exclusions(run_dir), *exclude]))
    for label in chosen:
        paths = qdq_paths(run_dir, label)
        if exclude or not all(p.is_file() for p in paths.values()):
            ranges, _ = read_ranges(run_dir / f"{label}.json")
            paths = export_targets(source, out, label, ranges, kept_float, weights)
        candidates.append(Candidate(f"int8 {label}", "int8", paths["tensorrt"], paths["tensorrt"],
                                    paths["onnxruntime"], label, run_dir / f"{label}.json", source, kept_float))
    return candidates


def ranges_candidate(model: Path, ranges_file: Path, out: Path, exclude: Sequence[str] = ()) -> Candidate:
    """An INT8 candidate from one ranges JSON (say one ``calibkit import-cache`` wrote from a TensorRT 10
    cache), exported into ``out`` with the weights of the run folder it sits in, where it sits in one."""
    ranges, document = read_ranges(ranges_file)
    check_made_from(model, document.get("provenance", {}).get("model_sha256"), ranges_file, "ranges")
    label = Path(ranges_file).name.removesuffix(".json")
    source = run_graph(model, Path(ranges_file).parent)
    paths = export_targets(source, Path(out), label, ranges, tuple(exclude), run_weights(Path(ranges_file).parent))
    return Candidate(f"int8 {label}", "int8", paths["tensorrt"], paths["tensorrt"], paths["onnxruntime"], label,
                     Path(ranges_file), source, tuple(exclude))


def fp16_candidate(model: Path, out: Path) -> Candidate:
    """The FP16-cast model as a candidate (written to ``out/model.fp16.onnx``)."""
    path = export_fp16(model, Path(out) / "model.fp16.onnx")
    return Candidate("fp16", "fp16", path, path)


def model_preprocess(
    model_path: Path, preprocess: Preprocess | str = "imagenet-tf", size: tuple[int, int] | None = None
) -> Preprocess:
    """The preprocessing to feed ``model_path``: a preset or explicit settings fitted to its input."""
    spec = get_preset(preprocess) if isinstance(preprocess, str) else preprocess
    info = image_input(load_model(model_path), model_path)
    return fit_to_model(spec, info.height, info.width, info.layout, str(model_path), size)


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


def run_weights(run_dir: Path) -> RefinedWeights | None:
    """The run's rounded weights and corrected biases, where it kept them."""
    kept = Path(run_dir) / RUN_WEIGHTS
    return RefinedWeights.load(kept) if kept.is_file() else None


def run_graph(model: Path, run_dir: Path) -> Path:
    """The FP32 graph a run calibrated: its ``model.calibrated.onnx`` when it kept one, else ``model``."""
    kept = Path(run_dir) / CALIBRATED_GRAPH
    return kept if kept.is_file() else Path(model)


def calibrate(
    model: Path,
    images: Path | Sequence[ImageItem],
    out: Path,
    methods: str = "entropy2",
    samples: int | None = 500,
    sampler: str = "random",
    seed: int = 0,
    preprocess: Preprocess | str = "imagenet-tf",
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
    what the builder made of them as ``engine-check.json``.
    """
    began = time.perf_counter()
    model, out = Path(model), Path(out)
    calibrators = {c.label: c for c in parse_methods(methods)}
    check_rounding(weight_rounding)
    check_backend(ray, backend)
    require(backend, lambda info: info.stats_batch is not None, "the statistics pass")
    ensure_writable_dir(out)
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
    cleared = clear_earlier_run(out)
    if cleared:
        warnings.warn(f"{out}: removed {len(cleared)} files of an earlier run, so the folder describes this run only",
                      stacklevel=2)
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
    calibrated = normalized_model(source).model
    layers = weighted_layers(calibrated, quantized_nodes(calibrated))
    moments = (MomentCollector(layers, min(MOMENT_IMAGES, len(chosen)), MIN_SAMPLES_PER_COLUMN, seed=seed)
               if weight_rounding != "nearest" or bias_correction else None)
    batch = batch_size or backend_info(backend).stats_batch
    if ray:
        stats = sharded_statistics(source, chosen, spec, batch, DEFAULT_BINS, skip_bad, shard_size or 50, moments, ray)
    else:
        stats = collect_statistics(source, chosen, spec, batch_size=batch, skip_bad=skip_bad, shard_size=shard_size,
                                   moments=moments, backend=backend)
    timings["statistics_s"] = stats.seconds
    start = time.perf_counter()
    weights = refine_weights(calibrated, layers, moments.moments if moments else {}, weight_rounding, bias_correction)
    weights.save(out / RUN_WEIGHTS)
    timings["weights_s"] = time.perf_counter() - start
    stats.provenance.update({"model": model.name, "model_sha256": file_sha256(model), "calibrated graph": source.name,
                             "sampler": sampler, "seed": seed, "pool_size": len(pool),
                             "graph normalisation": graph.summary(), "depthwise equalisation": equalized,
                             "weights": weights.summary()})
    stats.save(out / "stats.npz")
    write_text_atomic(out / "images.txt", "".join(f"{p}\n" for p in stats.images))
    ranges, references = {}, {}
    quantized = quantized_inputs(calibrated)
    start = time.perf_counter()
    for label, calibrator in calibrators.items():
        began_method = time.perf_counter()
        ranges[label] = compute_ranges(stats.tensors, calibrator)
        references[label] = Reference.of(ranges[label], time.perf_counter() - began_method)
        warn_clipping(label, ranges[label], quantized)
    timings["ranges_s"] = time.perf_counter() - start
    jobs = [MethodFiles(source, out, calibrator, ranges[label], stats.provenance, trt_version, tuple(exclude), weights)
            for label, calibrator in calibrators.items()]

    def check_sufficiency() -> dict | None:
        if len(stats.shards) < 2:
            return None
        started = time.perf_counter()
        result = sufficiency(stats.shards, stats.shard_images, list(calibrators.values()),
                             budget_s=SUFFICIENCY_BUDGET * stats.seconds, references=references)
        timings["sufficiency_s"] = time.perf_counter() - started
        return result

    start = time.perf_counter()
    with progress(len(jobs), "ranges and Q/DQ exports", unit="method") as bar:
        enough = write_all(jobs, check_sufficiency, lambda label: bar.update(1))
    timings["export_s"] = time.perf_counter() - start
    engine = None
    if engines is not None:
        start = time.perf_counter()
        built = [Candidate(f"int8 {label}", "int8", qdq_paths(out, label)["tensorrt"], calibrator=label)
                 for label in calibrators]
        engine = engine_check(model, built, spec, engines, out)
        write_text_atomic(out / ENGINE_CHECK, json.dumps(reproducible(engine), indent=1) + "\n")
        timings["engine_check_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - began
    summary = {"model": str(model), "methods": list(calibrators), "exclude": list(exclude), "timings": timings,
               **stats.provenance, "coverage": coverage, "sufficiency": enough}
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return CalibrationRun(out, model, stats, ranges, calibrators, chosen, timings, enough, coverage, engine)


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


def bench_models(models: Sequence[tuple[str, str, Path]], input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = (1, 8, 32), backend: str = "ort-cpu") -> list[dict]:
    """Speed rows for ``(name, precision, path)`` models on one backend, timed side by side in rounds
    (:mod:`calibkit.bench.speed`), with speedups over ``fp32`` and their spread. ONNX Runtime sessions
    share one arena, so each run reuses memory as a deployed session does while holding every model at
    once stays near one model's peak."""
    from calibkit.backends import load
    from calibkit.bench.speed import measure_interleaved, with_ratios

    sessions = [(name, precision, load(path, precision, backend, shared_arena=True)) for name, precision, path in models]
    with progress(len(batch_sizes), "benchmarking (interleaved rounds)", unit="batch size") as bar:
        results = []
        for batch in batch_sizes:
            results.extend(measure_interleaved(sessions, input_shape, [batch]))
            bar.update(1)
    return with_ratios(results)


def usable_batch_sizes(model: Path, requested: Sequence[int]) -> list[int]:
    """``requested``, or the model's own batch size (with a warning) when its batch axis is fixed."""
    fixed = image_input(load_model(model), model).batch
    if fixed is None or list(requested) == [fixed] or not requested:
        return list(requested)
    warnings.warn(f"{model}: the model's batch size is fixed at {fixed}; timing batch {fixed} only", stacklevel=2)
    return [fixed]


def input_shape(preprocess: Preprocess) -> tuple[int, int, int]:
    """Shape of one preprocessed image without the batch axis."""
    return preprocess.input_shape()


def model_task(model: Path, preprocess: Preprocess, name: str | None = "auto",
               options: Mapping[str, str] | None = None, items: Sequence[ImageItem] = ()) -> Task:
    """The task plug-in for ``model`` (detected from its outputs for ``auto``), set up for ``preprocess``."""
    outputs = [OutputInfo(name, shape) for name, shape in model_outputs(load_model(model))]
    labels = [item.label for item in items]
    num_labels = max(labels) + 1 if labels and None not in labels else None
    context = TaskContext(outputs, tuple(preprocess.size), preprocess, dict(options or {}), num_labels)
    return make_task(name, context)


def compare_and_report(
    model: Path,
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    candidates: Sequence[Candidate],
    report: Path,
    task: Task,
    fail_on: Sequence[str] = (),
    unusable_if: Sequence[str] | None = None,
    batch_size: int = 8,
    skip_bad: bool = False,
    batch_sizes: Sequence[int] = (1, 8, 32),
    run: CalibrationRun | None = None,
    note: str | None = None,
    accuracy_budget: float | None = None,
    sensitivity_images: int = 100,
    budget_metric: str = "auto",
    backend: str = "ort-cpu",
    ray: str | None = None,
    engines: EngineSettings | None = None,
) -> dict:
    """Compare in the task's terms, judge each candidate, optionally rank layer sensitivity and fit an
    accuracy budget, write ``report`` (HTML) and its JSON, then benchmark and write them again: a
    failed benchmark never discards a finished comparison. Every model runs and is timed on ``backend``.
    With ``ray`` (an address, or ``local``) the comparison and the sensitivity ranking run as Ray tasks
    (:mod:`calibkit.distributed`). ``engines`` (resolved settings) adds what TensorRT-RTX builds of every
    model (:func:`engine_check`). Returns the JSON document."""
    from calibkit.compare.run import compare_models
    from calibkit.compare.verdict import judge, rules_for
    from calibkit.distributed import sharded_comparison
    from calibkit.report.html import write_report

    require(backend)
    check_backend(ray, backend)
    unusable_rules, gate_rules = rules_for(task, fail_on, unusable_if)
    if accuracy_budget is not None:
        task.check_budget_metric(budget_metric)
    compare = partial(sharded_comparison, address=ray) if ray else compare_models
    comparison = compare(model, candidates, items, preprocess, task, batch_size, skip_bad, backend=backend)
    trim_heap()
    comparison["rules"] = {"unusable_if": [str(r) for r in unusable_rules], "fail_on": [str(r) for r in gate_rules]}
    for c in comparison["candidates"]:
        c["verdict"] = judge(c["metrics"], unusable_rules, gate_rules)
    if note:
        comparison["note"] = note
    models = [("fp32", "fp32", Path(model))] + [(c.name, c.precision, c.speed_model or c.model) for c in candidates]
    if accuracy_budget is not None:
        started = time.perf_counter()
        sensitivity = sensitivity_and_budget(model, items, preprocess, task, candidates, comparison, accuracy_budget,
                                             Path(report).parent, sensitivity_images, budget_metric, ray, skip_bad)
        comparison["sensitivity"] = sensitivity
        comparison["timings"]["sensitivity_and_budget_s"] = time.perf_counter() - started
        if sensitivity["budget"]["models"]:
            models.append((sensitivity["name"], "int8", Path(sensitivity["budget"]["models"]["onnxruntime"])))
        trim_heap()
    if engines is not None:
        started = time.perf_counter()
        built = list(candidates)
        if comparison.get("sensitivity", {}).get("budget", {}).get("models"):
            mixed = comparison["sensitivity"]
            built.append(Candidate(mixed["name"], "int8", Path(mixed["budget"]["models"]["tensorrt"]),
                                   calibrator=f"{mixed['calibrator']}.mixed"))
        comparison["engine"] = engine_check(model, built, preprocess, engines, Path(report).parent)
        comparison["timings"]["engine_check_s"] = time.perf_counter() - started
    provenance = {"model": str(model), "model_sha256": file_sha256(Path(model)), "images": len(items),
                  "task": task.name, "task settings": json.dumps(task.settings),
                  "preprocess": json.dumps(preprocess.to_dict())}
    extras, calibration_rows = calibration_sections(run, candidates)
    provenance.update(calibration_rows)
    provenance.update(environment([item.path for item in items]))
    if comparison.get("engine"):
        engine = comparison["engine"]
        provenance["TensorRT-RTX engine check"] = f"TensorRT-RTX {engine['tensorrt_rtx_version']}, {engine['target']}"
    provenance["peak RSS so far (GB)"] = f"{peak_rss_gb():.2f}"
    write_report(report, comparison, [], provenance=provenance, **extras)
    speed: list[dict] = []
    if batch_sizes:
        try:
            started = time.perf_counter()
            speed = bench_models(models, input_shape(preprocess), usable_batch_sizes(model, batch_sizes), backend)
            comparison["timings"]["bench_s"] = time.perf_counter() - started
            started = time.perf_counter()
            profiling = backend_info(backend).profiling
            if profiling == "ops":
                comparison["profiles"] = op_profiles(models, input_shape(preprocess))
            elif profiling == "placement":
                comparison["placement"] = provider_placement(models, input_shape(preprocess), backend)
            elif profiling == "layers":
                from calibkit.bench.profile import engine_layer_times

                comparison["layer_times"] = engine_layer_times(models, input_shape(preprocess), backend)
            comparison["timings"]["profile_s"] = time.perf_counter() - started
        except CalibkitError as exc:
            comparison["speed_error"] = str(exc)
            warnings.warn(f"benchmark failed ({exc}); the report holds the comparison without speed", stacklevel=2)
        write_report(report, comparison, speed, provenance=provenance, **extras)
    return {"comparison": comparison, "speed": speed}


def calibration_sections(run: CalibrationRun | None, candidates: Sequence[Candidate]) -> tuple[dict, dict]:
    """The report's calibration sections (statistics, thresholds, sufficiency) and provenance rows: from
    ``run`` when this command calibrated, else read back from the run folder the INT8 candidates came from."""
    if run is not None:
        stats, ranges, timings, coverage, enough = run.stats, run.ranges, run.timings, run.coverage, run.sufficiency
    else:
        run_dir = next((c.ranges.parent for c in candidates if c.ranges is not None), None)
        if run_dir is None or not (run_dir / "stats.npz").is_file():
            return {"stats": None, "thresholds": None, "sufficiency": None}, {}
        stats = CollectedStats.load(run_dir / "stats.npz")
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
        ranges = {c.calibrator: read_ranges(c.ranges)[0] for c in candidates
                  if c.ranges is not None and c.ranges.parent == run_dir}
        timings, coverage, enough = summary.get("timings", {}), summary.get("coverage"), summary.get("sufficiency")
    rows = {f"calibration {k}": v for k, v in stats.provenance.items() if k != "preprocess"}
    rows["calibration timings (s)"] = json.dumps({k: round(v, 2) for k, v in timings.items()})
    if coverage:
        rows["calibration subset coverage"] = json.dumps(coverage)
    thresholds = {label: {name: r.amax for name, r in table.items()} for label, table in ranges.items()}
    return {"stats": stats.tensors, "sufficiency": enough, "thresholds": thresholds}, rows


def op_profiles(models: Sequence[tuple[str, str, Path]], shape: Sequence[int]) -> dict[str, dict]:
    """Where each INT8 model's CPU time goes (:mod:`calibkit.bench.profile`), by candidate name."""
    from calibkit.bench.profile import profile_ops, summarize

    return {name: summarize(profile_ops(path, shape)) for name, precision, path in models if precision == "int8"}


def provider_placement(models: Sequence[tuple[str, str, Path]], shape: Sequence[int], backend: str) -> dict[str, dict]:
    """Per model, the nodes ONNX Runtime left on the CPU on a GPU ``backend`` (:func:`cpu_fallbacks`)."""
    from calibkit.backends.onnxruntime import CUDA_OPTIONS
    from calibkit.bench.profile import cpu_fallbacks

    providers = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    return {name: cpu_fallbacks(path, shape, providers) for name, _, path in models}


def calibration_overlap(items: Sequence[ImageItem], candidates: Sequence[Candidate],
                        exclude: bool = False) -> tuple[list[ImageItem], str | None]:
    """The evaluation items (without the images any INT8 candidate was calibrated on, with ``exclude``)
    and a sentence for the report when the two sets overlap."""
    used: set[Path] = set()
    for candidate in candidates:
        listed = candidate.ranges.parent / "images.txt" if candidate.ranges is not None else None
        if listed is not None and listed.is_file():
            used.update(Path(line).resolve() for line in listed.read_text(encoding="utf-8").splitlines() if line)
    shared = [item for item in items if item.path.resolve() in used]
    if not shared:
        return list(items), None
    if not exclude:
        return list(items), (f"{len(shared)} of the {len(items)} evaluation images were also calibration images; "
                             "scores on them can flatter INT8 (--exclude-calibration-images leaves them out).")
    kept = [item for item in items if item.path.resolve() not in used]
    if not kept:
        raise CalibkitError("every evaluation image was a calibration image; pass other --images to evaluate on")
    return kept, f"{len(shared)} calibration images left out of the evaluation; {len(kept)} evaluated."


def image_cache(items: Sequence[ImageItem], preprocess: Preprocess, skip_bad: bool = False):
    """The images preprocessed once for repeated scoring (:class:`~calibkit.compare.image_cache.ImageCache`:
    in memory up to its limit, the rest on disk), decoded when first used."""
    from calibkit.compare.image_cache import ImageCache
    from calibkit.data.loader import iter_batches

    def decode():
        with progress(len(items), "decoding images") as bar:
            for batch in iter_batches(items, preprocess, 16, skip_bad=skip_bad):
                bar.update(len(batch.array))
                yield batch

    return ImageCache(decode=decode)


def sensitivity_and_budget(model: Path, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
                           candidates: Sequence[Candidate], comparison: dict, budget: float, out: Path,
                           sensitivity_images: int = 100, budget_metric: str = "auto", ray: str | None = None,
                           skip_bad: bool = False) -> dict:
    """Rank layers for the best INT8 candidate on a seeded subset (in Ray tasks with ``ray``), then fit
    ``budget`` on all images (the comparison's measurement of that candidate is step 0). Layers the
    candidate keeps in float (``--exclude``) stay float in every variant and are not ranked."""
    from calibkit.compare.sensitivity import fit_accuracy_budget, layer_sensitivity
    from calibkit.distributed import sharded_leave_one_out

    results = {c["name"]: c for c in comparison["candidates"]}
    int8 = [c for c in candidates if c.precision == "int8" and c.ranges is not None]
    if not int8:
        raise CalibkitError("--accuracy-budget needs an INT8 candidate from a calibration run")
    best = min(int8, key=lambda c: task.budget_loss(results[c.name]["metrics"], budget_metric)[0])
    ranges, _ = read_ranges(best.ranges)
    subset = sample(list(items), min(sensitivity_images, len(items)), "random", seed=0)
    source = best.source or model
    weights = run_weights(best.ranges.parent)
    started = time.perf_counter()
    rank = partial(sharded_leave_one_out, address=ray) if ray else None
    ranking = layer_sensitivity(source, ranges, image_cache(subset, preprocess, skip_bad), task, weights=weights,
                                rank=rank, exclude=best.exclude)
    ranked_s = time.perf_counter() - started
    fitted = fit_accuracy_budget(source, ranges, image_cache(items, preprocess, skip_bad), task,
                                 [r["node"] for r in ranking], budget, Path(out) / f"{best.calibrator}.mixed",
                                 metric=budget_metric, weights=weights, measured=results[best.name]["metrics"],
                                 exclude=best.exclude)
    return {
        "name": f"int8 {best.calibrator} mixed",
        "calibrator": best.calibrator,
        "sensitivity_images": len(subset),
        "ranking": ranking,
        "budget": {"budget": budget, "metric": fitted.metric, "met": fitted.met, "kept_float": fitted.kept_float,
                   "steps": fitted.steps, "models": fitted.models},
        "seconds": {"ranking": ranked_s, "budget": time.perf_counter() - started - ranked_s},
    }
