"""The calibration chain: pick images -> collect statistics once -> every calibrator -> cache + JSON +
Q/DQ models per calibrator, and what TensorRT-RTX builds of them."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import onnx

from calibkit.artifacts.method_files import MethodFiles, export_targets, qdq_paths, write_all
from calibkit.artifacts.placement import quantized_inputs, quantized_nodes
from calibkit.artifacts.qdq import resolve_exclusions
from calibkit.backends.base import backend_info
from calibkit.calib.registry import (Calibrator, TensorRange, compute_ranges, warn_clipping,
                                    with_full_range)
from calibkit.calib.weights import MIN_SAMPLES_PER_COLUMN, RefinedWeights, refine_weights
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem, discover_images
from calibkit.data.preprocess import Preprocess, fit_to_model, get_preset, metadata_size, preset_for
from calibkit.distributed import sharded_statistics
from calibkit.engine.summary import EngineSettings, reproducible
from calibkit.graph.equalize import equalize, tensors_to_measure
from calibkit.fileio import atomic_path, write_text_atomic
from calibkit.memory import peak_rss_gb, trim_heap
from calibkit.graph.normalize import FP32Reference, Normalized, check_equivalent, fp32_reference, normalized_model
from calibkit.notices import recording, warned_so_far
from calibkit.graph.onnx_model import file_sha256, image_input, model_metadata, model_outline
from calibkit.progress import progress
from calibkit.run_folder import SUMMARY, TIMINGS, run_transaction
from calibkit.samplers.coverage import coverage_report
from calibkit.samplers.embedding import readable_embeddings, thumbnail_embeddings
from calibkit.samplers.registry import sample
from calibkit.samplers.sufficiency import Reference, sufficiency
from calibkit.stats.channels import channel_absmax
from calibkit.stats.collect import CollectedStats, collect_statistics
from calibkit.stats.histogram import DEFAULT_BINS
from calibkit.stats.moments import MOMENT_IMAGES, MomentCollector, weighted_layers
from calibkit.workflow.candidates import CALIBRATED_GRAPH, RUN_WEIGHTS, fp16_candidate
from calibkit.workflow.config import CalibrationConfig


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
    proto = model_outline(model_path)
    metadata = model_metadata(proto)
    spec = preprocess if isinstance(preprocess, Preprocess) else get_preset(preprocess or preset_for(metadata))
    info = image_input(proto, model_path)
    dynamic = info.height is None or info.width is None
    return fit_to_model(spec, info.height, info.width, info.layout, str(model_path),
                        size or (metadata_size(metadata) if dynamic else None))


def model_preset(model_path: Path) -> Preprocess:
    """The preset ``model_path``'s exporter metadata implies (before any flag overrides it)."""
    return get_preset(preset_for(model_metadata(model_outline(model_path))))


def input_shape(preprocess: Preprocess) -> tuple[int, int, int]:
    """Shape of one preprocessed image without the batch axis."""
    return preprocess.input_shape()


def check_shape(model: Path, preprocess: Preprocess) -> tuple[int, ...]:
    """Input shape (batch included) on which a rewritten graph is checked against the model."""
    return (image_input(model_outline(model), model).batch or 1, *input_shape(preprocess))


def normalized_graph(model: Path, reference: FP32Reference) -> Normalized:
    """The graph calibration runs on, checked against the model's FP32 outputs."""
    graph = normalized_model(model)
    check_equivalent(reference, graph, model)
    return graph


def equalized_graph(model: Path, reference: FP32Reference, chosen: Sequence[ImageItem], preprocess: Preprocess,
                    out: Path, skip_bad: bool = False) -> tuple[Path, str]:
    """The graph to calibrate, ``out/model.calibrated.onnx`` where equalising changed it (checked against
    the model's FP32 outputs) else ``model``, and a line saying what was equalised."""
    graph = normalized_model(model)
    targets = tensors_to_measure(graph.model)
    (out / CALIBRATED_GRAPH).unlink(missing_ok=True)
    if not targets:
        return model, "no depthwise convolution with an input unbounded by a Clip"
    subset = list(chosen)[:: max(1, len(chosen) // EQUALIZATION_IMAGES)][:EQUALIZATION_IMAGES]
    peaks = channel_absmax(graph.model, model, subset, preprocess, targets, skip_bad)
    equalized, done = equalize(graph.model, peaks)
    if not done.scales:
        return model, f"{len(targets)} depthwise input(s) already even"
    check_equivalent(reference, Normalized(equalized, graph.opset), out / CALIBRATED_GRAPH)
    with atomic_path(out / CALIBRATED_GRAPH) as tmp:
        onnx.save(equalized, str(tmp))
    return out / CALIBRATED_GRAPH, done.summary()


# Fewer calibration images than this get a warning: ranges from a handful of images rarely hold for others.
FEW_IMAGES = 100


@recording
def calibrate(model: Path, images: Path | Sequence[ImageItem], out: Path, methods: str = "entropy2",
              **options) -> CalibrationRun:
    """Calibrate ``model`` on a sample of ``images`` with every method in ``methods``; write to ``out``.

    ``options`` are the fields of :class:`~calibkit.workflow.config.CalibrationConfig`, checked before any work.
    Per method: ``<label>.cache`` (TensorRT), ``<label>.json``, ``<label>.qdq.onnx`` (TensorRT target)
    and ``<label>.ort.onnx`` (ONNX Runtime CPU target). Also ``stats.npz``, ``images.txt``, ``summary.json``.
    ``batch_size`` defaults to the backend's statistics batch (``BackendInfo.stats_batch``). With
    ``equalize_depthwise``, uneven depthwise inputs are equalised first (:mod:`calibkit.graph.equalize`) and the
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
    state = Calibration(CalibrationConfig(model, images, out, methods, **options))
    prepare(state)
    state.timings["checks_s"] = time.perf_counter() - began
    with state.timed("sampling_s"):
        choose_images(state)
    with run_transaction(state.config.out, state.config.force) as staging:  # written beside, moved in whole
        state.staging = staging
        for stage in STAGES:
            stage(state)
        state.timings["total_s"] = time.perf_counter() - began
        state.timings["peak_rss_gb"] = peak_rss_gb()
        return write_summary(state)


@dataclass
class Calibration:
    """A calibration as its stages fill it in, from the checked options to the exports' results."""

    config: CalibrationConfig
    timings: dict[str, float] = field(default_factory=dict)
    staging: Path | None = None  # the folder the run is written into, moved to ``config.out`` at the end
    spec: Preprocess | None = None
    reference: FP32Reference | None = None
    normalisation: str = ""
    pool: list[ImageItem] = field(default_factory=list)
    chosen: list[ImageItem] = field(default_factory=list)
    coverage: dict | None = None
    source: Path | None = None  # the FP32 graph calibrated: the model, or its equalised graph
    equalized: str = "off"
    layers: list = field(default_factory=list)
    quantized_inputs: set[str] = field(default_factory=set)  # the activations the Q/DQ models quantize
    model_inputs: list[str] = field(default_factory=list)
    moments: MomentCollector | None = None
    stats: CollectedStats | None = None
    weights: RefinedWeights | None = None
    ranges: dict[str, dict[str, TensorRange]] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)
    sufficiency: dict | None = None
    engine: dict | None = None
    kept_float: list[str] = field(default_factory=list)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Record the block's wall time as ``timings[key]``."""
        start = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - start


def prepare(state: Calibration) -> None:
    """The preprocessing, the model's FP32 reference outputs and its normalised graph (checked against
    them), the exclusions resolved against it, and the image pool."""
    config = state.config
    state.spec = model_preprocess(config.model, config.preprocess)
    state.reference = fp32_reference(config.model, check_shape(config.model, state.spec))
    graph = normalized_graph(config.model, state.reference)
    resolve_exclusions(graph.model, config.exclude)
    state.normalisation = graph.summary()
    del graph  # read again where needed: not held beside the sessions of a large model
    images = config.images
    state.pool = discover_images(Path(images), config.labels) if isinstance(images, (str, Path)) else list(images)


def choose_images(state: Calibration) -> None:
    """The calibration subset, drawn by the sampler (unreadable images left out first with ``skip_bad``)."""
    config, pool = state.config, state.pool
    if config.skip_bad and config.samples and config.samples < len(pool):
        pool, _ = readable_embeddings(pool, skip_bad=True)
    state.pool = pool
    state.chosen = sample(pool, config.samples, config.sampler, config.seed)
    if len(state.chosen) < FEW_IMAGES:
        warnings.warn(f"calibrating on {len(state.chosen)} image(s): ranges from so few rarely hold for other images "
                      "(TensorRT suggests about 500); pass more images", stacklevel=3)


def measure_coverage(state: Calibration) -> None:
    """How well the subset covers the pool, where it is a subset."""
    if state.config.report_coverage and len(state.chosen) < len(state.pool):
        with state.timed("coverage_s"):
            state.coverage = coverage_report(state.pool, state.chosen, thumbnail_embeddings(state.pool))


def equalize_graph(state: Calibration) -> None:
    """The graph to calibrate: the model, or its depthwise-equalised graph (kept in the run)."""
    config = state.config
    state.source = config.model
    if config.equalize_depthwise:
        with state.timed("equalization_s"):
            state.source, state.equalized = equalized_graph(config.model, state.reference, state.chosen, state.spec,
                                                            state.staging, config.skip_bad)
    trim_heap()  # what the checks and equalisation freed goes back before the statistics pass


def collect(state: Calibration) -> None:
    """The one statistics pass (in Ray tasks with ``ray``), with the weighted layers' input moments."""
    config = state.config
    calibrated = normalized_model(state.source).model
    state.layers = weighted_layers(calibrated, quantized_nodes(calibrated))
    state.quantized_inputs = quantized_inputs(calibrated)
    state.model_inputs = [i.name for i in calibrated.graph.input]
    del calibrated  # not held through the pass: a second copy of a large model's weights
    if config.weight_rounding != "nearest" or config.bias_correction:
        state.moments = MomentCollector(state.layers, min(MOMENT_IMAGES, len(state.chosen)), MIN_SAMPLES_PER_COLUMN,
                                        seed=config.seed)
    batch = config.batch_size or backend_info(config.backend).stats_batch
    if config.ray:
        state.stats = sharded_statistics(state.source, state.chosen, state.spec, batch, DEFAULT_BINS, config.skip_bad,
                                         config.shard_size or 50, state.moments, config.ray, config.memory_budget)
    else:
        state.stats = collect_statistics(state.source, state.chosen, state.spec, batch_size=batch,
                                         skip_bad=config.skip_bad, shard_size=config.shard_size, moments=state.moments,
                                         backend=config.backend, memory_budget=config.memory_budget)
    state.timings["statistics_s"] = state.stats.seconds
    state.timings["statistics_graph_segments"] = state.stats.segments
    trim_heap()  # the pass's sessions are gone: what they freed goes back before the exports


def refine(state: Calibration) -> None:
    """The run's INT8 weights (rounded, biases corrected), then its provenance, statistics and image list."""
    config, out = state.config, state.staging
    with state.timed("weights_s"):
        calibrated = normalized_model(state.source).model
        state.weights = refine_weights(calibrated, state.layers, state.moments.moments if state.moments else {},
                                       config.weight_rounding, config.bias_correction)
        state.weights.save(out / RUN_WEIGHTS)
    provenance = state.stats.provenance
    provenance.update({"model": config.model.name, "model_sha256": file_sha256(config.model),
                       "calibrated graph": state.source.name, "sampler": config.sampler, "seed": config.seed,
                       "pool_size": len(state.pool), "graph normalisation": state.normalisation,
                       "depthwise equalisation": state.equalized, "weights": state.weights.summary(),
                       "weights_file": {"file": RUN_WEIGHTS, "sha256": file_sha256(out / RUN_WEIGHTS)}})
    # what every file of the run records, so a folder mixing two runs' files is refused when read
    provenance["run_id"] = hashlib.sha256(json.dumps(
        [provenance, list(config.calibrators), list(config.exclude), config.trt_version],
        sort_keys=True).encode()).hexdigest()[:16]
    state.stats.save(out / "stats.npz")
    write_text_atomic(out / "images.txt", "".join(f"{p}\n" for p in state.stats.images))


def compute_all_ranges(state: Calibration) -> None:
    """Every calibrator's ranges from the statistics (the graph input at its full range), with a warning
    where one clips a quantized tensor hard."""
    with state.timed("ranges_s"):
        for label, calibrator in state.config.calibrators.items():
            computed = compute_ranges(state.stats.tensors, calibrator)
            state.references[label] = Reference.of(computed)
            state.ranges[label] = with_full_range(computed, state.model_inputs)
            warn_clipping(label, state.ranges[label], state.quantized_inputs)


def export(state: Calibration) -> None:
    """Each calibrator's cache, JSON and Q/DQ models, with the sufficiency check of the ranges beside them."""
    config = state.config
    jobs = [MethodFiles(state.source, state.staging, calibrator, state.ranges[label], state.stats.provenance,
                        config.trt_version, config.exclude, state.weights)
            for label, calibrator in config.calibrators.items()]
    with state.timed("export_s"), progress(len(jobs), "ranges and Q/DQ exports", unit="method") as bar:
        state.sufficiency = write_all(jobs, lambda: check_sufficiency(state), lambda label: bar.update(1))


def check_sufficiency(state: Calibration) -> dict | None:
    """Whether fewer images would have given the same ranges (:mod:`calibkit.samplers.sufficiency`)."""
    stats, config = state.stats, state.config
    if len(stats.shards) < 2:
        if config.shard_size:
            warnings.warn(f"sufficiency check skipped: {len(state.chosen)} image(s) make fewer than two shards "
                          f"of {config.shard_size}, so there is no subset to compare the ranges with", stacklevel=2)
        return None
    with state.timed("sufficiency_s"):
        return sufficiency(stats.shards, stats.shard_images, list(config.calibrators.values()),
                           max_cost=SUFFICIENCY_MAX_COST, references=state.references)


def check_built_engines(state: Calibration) -> None:
    """With ``engines``, what TensorRT-RTX builds of the exports (nodes it runs in float kept float)."""
    config = state.config
    if config.engines is None:
        return
    with state.timed("engine_check_s"):
        state.engine, state.kept_float = checked_exports(config.model, state.staging, state.spec, config.engines,
                                                         state.source, state.ranges, config.exclude, state.weights)
        write_text_atomic(state.staging / ENGINE_CHECK, json.dumps(reproducible(state.engine), indent=1) + "\n")


# The stages a calibration runs inside its run folder's transaction, in order.
STAGES = (measure_coverage, equalize_graph, collect, refine, compute_all_ranges, export, check_built_engines)


def write_summary(state: Calibration) -> CalibrationRun:
    """``timings.json`` and, last, ``summary.json`` (a run folder without it did not finish)."""
    config, out = state.config, state.staging
    summary = {"model": str(config.model), "methods": list(config.calibrators),
               "exclude": [*config.exclude, *state.kept_float], "kept float for TensorRT": state.kept_float,
               **state.stats.provenance, "coverage": state.coverage, "sufficiency": state.sufficiency,
               "warnings": warned_so_far()}
    write_text_atomic(out / TIMINGS, json.dumps(state.timings, indent=1) + "\n")
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return CalibrationRun(config.out, config.model, state.stats, state.ranges, config.calibrators, state.chosen,
                          state.timings, state.sufficiency, state.coverage, state.engine, summary["warnings"])


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
    shape = check_shape(model, preprocess)
    return check_engines(models, shape, settings, Path(out))
