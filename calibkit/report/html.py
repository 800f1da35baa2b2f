"""Render a comparison (plus optional calibration statistics and speed rows) to one HTML file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import jinja2
import numpy as np

from calibkit.backends.base import backend_info
from calibkit.colours import colour_key
from calibkit.compare.results import CandidateResult, Comparison, ReportDocument, TensorDrift
from calibkit.fileio import write_text_atomic
from calibkit.report.provenance import cpu_name, gpu_name, usable_cpus
from calibkit.report.svg import axis_range, histogram_chart, index_ticks, line_chart, method_colours
from calibkit.stats.histogram import TensorStats
from calibkit.tasks.verdict import parse_rule

# Lowest-SQNR layers named beside their points in each per-layer chart.
MARKED_LAYERS = 3
WORST_LAYERS = 5
HIST_BARS = 256
# The sufficiency chart's rule: ranges that move less than this (mean |amax change|, %) between a
# subset and the whole calibration set would not move with more images either.
SUFFICIENT_CHANGE_PCT = 1.0


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def method_key(candidate: CandidateResult) -> str:
    """What a candidate's colour follows (:func:`calibkit.colours.colour_key`)."""
    return colour_key(candidate.calibrator, candidate.name)


def _histograms(tensors: Sequence[str], stats: Mapping[str, TensorStats],
                thresholds: Mapping[str, Mapping[str, float]], colours: Mapping[str, str]) -> list[dict]:
    figures = []
    for tensor in tensors:
        if tensor not in stats or not stats[tensor].count:
            continue
        st = stats[tensor]
        counts, edges = st.resampled(HIST_BARS)
        marks = {label: amaxes[tensor] for label, amaxes in thresholds.items() if tensor in amaxes}
        figures.append({"tensor": tensor, "svg": histogram_chart(list(counts), float(edges[-1]), marks, colours)})
    return figures


def _rule_classes(comparison: Comparison, metrics: Sequence[str]) -> dict[str, list]:
    """The gate, unusable and degraded rules of the run by metric key, so a cell can be coloured by its
    threshold."""
    rules: dict[str, list] = {}
    given = comparison.rules or {}
    for text in [*given.get("fail_on", []), *given.get("unusable_if", []), *given.get("degraded_if", [])]:
        rule = parse_rule(text, metrics)
        rules.setdefault(rule.metric, []).append(rule)
    return rules


def _metric_table(comparison: Comparison, colours: Mapping[str, str]) -> dict:
    """Columns (the task's metrics that have a value somewhere) and one row per model, formatted; a
    cell under a gate or unusable rule is marked ``bad`` when the rule is met, else ``good`` (never for
    a candidate judged unusable)."""
    metrics = comparison.task.metrics
    reference = comparison.reference.metrics
    columns = [m for m in metrics
               if reference.get(m.key) is not None or any(c.metrics.get(m.key) is not None
                                                           for c in comparison.candidates)]
    rules = _rule_classes(comparison, [m.key for m in metrics] + ["output_sqnr"])

    def judged(values: Mapping, key: str, usable: bool = True) -> str:
        verdicts = [rule.met(values) for rule in rules.get(key, [])]
        return "bad" if any(verdicts) else "good" if usable and verdicts and values.get(key) is not None else ""

    rows = [{"name": "fp32 (reference)", "cells": [(m.format(None if m.versus_fp32 else reference.get(m.key)), "")
                                                   for m in columns], "status": "reference", "sqnr": ("–", ""),
             "colour": None}]
    for c in comparison.candidates:
        sqnr = c.metrics.get("output_sqnr")
        shown = "∞" if sqnr == math.inf else f"{sqnr:.1f}" if sqnr is not None else "–"
        usable = c.verdict.usable  # no number of a broken model is green
        rows.append({"name": c.name, "cells": [(m.format(c.metrics.get(m.key)), judged(c.metrics, m.key, usable))
                                               for m in columns],
                     "status": c.verdict.status, "sqnr": (shown, judged(c.metrics, "output_sqnr", usable)),
                     "colour": colours.get(method_key(c))})
    return {"columns": columns, "rows": rows}


def _detail_tables(candidate: CandidateResult) -> list[dict]:
    """Every list-of-rows entry of a candidate's task details as a table (e.g. per class)."""
    tables = []
    for key, value in candidate.details.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            header = list(value[0])
            rows = [[_cell(row.get(h)) for h in header] for row in value]
            tables.append({"title": f"{candidate.name}: {key.replace('_', ' ')}", "header": header, "rows": rows,
                           "note": candidate.details.get(f"{key}_note")})
    return tables


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _without_images(document: dict) -> dict:
    """``report.json``'s document with example figures keeping their captions, not their pixels."""
    for candidate in document["comparison"]["candidates"]:
        candidate["examples"] = [{"caption": e["caption"]} for e in candidate.get("examples", [])]
    return document


def write_report(
    out_html: Path,
    comparison: Comparison | Mapping,
    speed_rows: Sequence[Mapping] = (),
    stats: Mapping[str, TensorStats] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    provenance: Mapping | None = None,
    sufficiency: Mapping | None = None,
) -> tuple[Path, Path]:
    """Write ``out_html`` and ``<stem>.json`` with every number; return both paths. ``comparison`` may
    also be the ``comparison`` of a report.json (any schema version), read back as records."""
    if not isinstance(comparison, Comparison):
        comparison = Comparison.from_dict(comparison)
    out_html, out_json = Path(out_html), Path(out_html).with_suffix(".json")
    candidates = comparison.candidates
    worst_layers = {c.name: _worst_layers(c) for c in candidates}
    worst_tensors = [layer.tensor for layers in worst_layers.values() for layer in layers]
    thresholds = _in_candidate_order(thresholds, candidates)
    colours = method_colours([method_key(c) for c in candidates] + list(thresholds)
                             + list((sufficiency or {}).get("methods", {})))
    speed = {("fp32" if row["precision"] == "fp32" else row["candidate"], row["batch"]): row for row in speed_rows}
    html = _template().render(
        model_name=Path(comparison.reference.model).name,
        task=comparison.task,
        rules=comparison.rules or {},
        images=comparison.images,
        skipped=comparison.skipped_images,
        labelled=comparison.labelled,
        preprocess=comparison.preprocess,
        coverage_note=comparison.note,
        warnings=comparison.warnings or [],
        recommendation=comparison.recommendation,
        table=_metric_table(comparison, colours),
        details=[t for c in candidates for t in _detail_tables(c)],
        candidates=candidates,
        worst_layers=worst_layers,
        batch_sizes=sorted({row["batch"] for row in speed_rows}),
        speed=speed,
        speed_error=comparison.speed_error,
        profiles=comparison.profiles or {},
        placement=comparison.placement or {},
        layer_times=comparison.layer_times or {},
        on_gpu=backend_info(comparison.backend).on_gpu,
        speed_device=_speed_device(backend_info(comparison.backend)),
        drift_charts=_drift_charts(candidates, colours),
        histograms=_histograms(list(dict.fromkeys(worst_tensors)), stats or {}, thresholds, colours),
        layer_status=layer_status(comparison),
        sensitivity=comparison.sensitivity,
        engine=comparison.engine,
        engine_drift={c.name: _finite_drift(c) for c in candidates},
        sufficiency=sufficiency,
        sufficiency_chart=_sufficiency_chart(sufficiency, colours),
        sufficient_pct=SUFFICIENT_CHANGE_PCT,
        provenance=dict(provenance or {}),
        json_name=out_json.name,
    )
    document = ReportDocument(comparison, list(speed_rows), dict(provenance or {}), sufficiency).to_dict()
    write_text_atomic(out_json, json.dumps(_json_safe(_without_images(document)), indent=1, default=_default) + "\n")
    write_text_atomic(out_html, html)
    return out_html, out_json


def _template() -> jinja2.Template:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("calibkit.report", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    return environment.get_template("report.html.j2")


def _speed_device(backend) -> str:
    """Where the speed was measured, e.g. ``ONNX Runtime CPU on AMD EPYC 7B13, 2 CPUs usable``."""
    return f"{backend.label} on {gpu_name()}" if backend.on_gpu else \
        f"{backend.label} on {cpu_name()}, {usable_cpus()} CPUs usable"


def _finite_drift(candidate: CandidateResult) -> dict[str, float]:
    """SQNR by tensor of the candidate's layers that differ from FP32 at all (finite SQNR)."""
    return {layer.tensor: layer.sqnr_db for layer in candidate.layers if math.isfinite(layer.sqnr_db)}


def _worst_layers(candidate: CandidateResult) -> list[TensorDrift]:
    """The candidate's :data:`WORST_LAYERS` lowest-SQNR layers (identical ones, SQNR inf, left out)."""
    layers = [layer for layer in candidate.layers if math.isfinite(layer.sqnr_db)]
    return sorted(layers, key=lambda layer: layer.sqnr_db)[:WORST_LAYERS]


def layer_status(comparison: Comparison) -> str:
    """What the report says of its per-layer drift: on how many images, still to come, stopped, or none."""
    if comparison.layers_pending:
        return (f"per-layer drift on {comparison.layers_pending} images not in this report: that pass started "
                "after it was written, and writes the complete report beside it if it finishes")
    if not comparison.layer_images:
        return "no per-layer drift"
    note = comparison.layer_note
    return f"per-layer drift on the first {comparison.layer_images}" + (f" ({note})" if note else "")


def _drift_charts(candidates: Sequence[CandidateResult], colours: Mapping[str, str]) -> list[dict]:
    """Per-layer SQNR as small multiples, one chart per candidate on a shared y axis, so curves that
    would overlap on one chart stay readable and comparable."""
    with_layers = [c for c in candidates if c.layers]
    if not with_layers:
        return []
    y_range = axis_range([layer.sqnr_db for c in with_layers for layer in c.layers])
    charts = []
    for c in with_layers:
        labels = [layer.tensor for layer in c.layers]
        values = [layer.sqnr_db for layer in c.layers]
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        worst = sorted(finite, key=lambda i: values[i])[:MARKED_LAYERS]
        svg = line_chart({c.name: values}, labels, "SQNR (dB)", "layer index (network depth); the "
                         f"{len(worst)} lowest named", height=170, colours={c.name: colours.get(method_key(c))},
                         y_range=y_range, x_ticks=index_ticks(len(labels)),
                         marks={i: _short(labels[i]) for i in worst})
        charts.append({"name": c.name, "svg": svg})
    return charts


def _short(name: str, most: int = 32) -> str:
    """A tensor name short enough to sit beside a point: its tail, where the layer is told apart."""
    return name if len(name) <= most else "…" + name[-(most - 1):]


def _sufficiency_chart(sufficiency: Mapping | None, colours: Mapping[str, str]) -> str | None:
    """Mean range change against the number of calibration images: zero-based y, log-spaced x, and the
    dashed line under which a method's ranges have settled."""
    if not sufficiency or not sufficiency.get("methods"):
        return None
    methods = sufficiency["methods"]
    rows = next(iter(methods.values()))
    series = {label: [row["mean_change_pct"] for row in rows] for label, rows in methods.items()}
    values = [v for vs in series.values() for v in vs]
    return line_chart(series, [str(row["images"]) for row in rows], "mean |amax change| (%)",
                      "calibration images (log scale; bootstrap mean)", height=260, tick_labels=True, colours=colours,
                      x_values=[row["images"] for row in rows], log_x=True,
                      y_range=axis_range(values + [SUFFICIENT_CHANGE_PCT], floor=0.0),
                      rules={SUFFICIENT_CHANGE_PCT: f"{SUFFICIENT_CHANGE_PCT:g} %: settled"})


def _in_candidate_order(thresholds, candidates) -> dict:
    """Thresholds keyed like the candidates' calibrators, in candidate order, so colours match the charts."""
    thresholds = thresholds or {}
    ordered = [c.calibrator for c in candidates if c.calibrator in thresholds]
    return {label: thresholds[label] for label in ordered}


def _default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
