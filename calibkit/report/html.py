"""Render a comparison (plus optional calibration statistics and speed rows) to one HTML file."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Mapping, Sequence

import jinja2
import numpy as np

from calibkit.fileio import write_text_atomic
from calibkit.report.svg import histogram_chart, line_chart
from calibkit.stats.histogram import TensorStats
from calibkit.tasks.base import Metric

WORST_LAYERS = 5
HIST_BARS = 256


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _histograms(tensors: Sequence[str], stats: Mapping[str, TensorStats],
                thresholds: Mapping[str, Mapping[str, float]]) -> list[dict]:
    figures = []
    for tensor in tensors:
        if tensor not in stats or not stats[tensor].count:
            continue
        st = stats[tensor]
        counts, edges = st.resampled(HIST_BARS)
        marks = {label: amaxes[tensor] for label, amaxes in thresholds.items() if tensor in amaxes}
        figures.append({"tensor": tensor, "svg": histogram_chart(list(counts), float(edges[-1]), marks)})
    return figures


def _metric_table(comparison: Mapping, speed: Mapping) -> dict:
    """Columns (the task's metrics that have a value somewhere) and one row per model, formatted."""
    metrics = [Metric(**m) for m in comparison["task"]["metrics"]]
    reference = comparison["reference"]["metrics"]
    columns = [m for m in metrics
               if reference.get(m.key) is not None or any(c["metrics"].get(m.key) is not None
                                                           for c in comparison["candidates"])]
    rows = [{"name": "fp32 (reference)", "cells": [m.format(None if m.versus_fp32 else reference.get(m.key))
                                                   for m in columns], "status": "reference", "sqnr": "–"}]
    for c in comparison["candidates"]:
        sqnr = c["metrics"].get("output_sqnr")
        rows.append({"name": c["name"], "cells": [m.format(c["metrics"].get(m.key)) for m in columns],
                     "status": c["verdict"]["status"],
                     "sqnr": "∞" if sqnr == math.inf else f"{sqnr:.1f}" if sqnr is not None else "–"})
    return {"columns": columns, "rows": rows}


def _detail_tables(candidate: Mapping) -> list[dict]:
    """Every list-of-rows entry of a candidate's task details as a table (e.g. per class)."""
    tables = []
    for key, value in candidate.get("details", {}).items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            header = list(value[0])
            rows = [[_cell(row.get(h)) for h in header] for row in value]
            tables.append({"title": f"{candidate['name']}: {key.replace('_', ' ')}", "header": header, "rows": rows})
    return tables


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _without_images(comparison: Mapping) -> dict:
    """The comparison for JSON: example figures keep their captions, not their pixels."""
    document = dict(comparison)
    document["candidates"] = [
        {**c, "examples": [{"caption": e["caption"]} for e in c.get("examples", [])]} for c in comparison["candidates"]
    ]
    return document


def write_report(
    out_html: Path,
    comparison: Mapping,
    speed_rows: Sequence[Mapping] = (),
    stats: Mapping[str, TensorStats] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    provenance: Mapping | None = None,
    sufficiency: Mapping | None = None,
) -> tuple[Path, Path]:
    """Write ``out_html`` and ``<stem>.json`` with every number; return both paths."""
    out_html = Path(out_html)
    out_json = out_html.with_suffix(".json")
    candidates = []
    worst_tensors: list[str] = []
    for c in comparison["candidates"]:
        layers = [l for l in c["layers"] if math.isfinite(l["sqnr_db"])]
        worst = sorted(layers, key=lambda l: l["sqnr_db"])[:WORST_LAYERS]
        worst_tensors.extend(l["tensor"] for l in worst)
        candidates.append({**c, "worst_layers": worst})
    series = {}
    x_labels: list[str] = []
    for c in comparison["candidates"]:
        if c["layers"]:
            x_labels = x_labels or [l["tensor"] for l in c["layers"]]
            by_name = {l["tensor"]: l["sqnr_db"] for l in c["layers"]}
            series[c["name"]] = [by_name.get(name) for name in x_labels]
    speed = {}
    for row in speed_rows:
        key = "fp32" if row["precision"] == "fp32" else row["candidate"]
        speed[(key, row["batch"])] = row
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("calibkit.report", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = environment.get_template("report.html.j2").render(
        model_name=Path(comparison["reference"]["model"]).name,
        task=comparison["task"],
        rules=comparison.get("rules", {}),
        images=comparison["images"],
        skipped=comparison.get("skipped_images", 0),
        labelled=comparison["labelled"],
        preprocess=comparison.get("preprocess", ""),
        coverage_note=comparison.get("note"),
        table=_metric_table(comparison, speed),
        details=[t for c in comparison["candidates"] for t in _detail_tables(c)],
        candidates=candidates,
        batch_sizes=sorted({row["batch"] for row in speed_rows}),
        speed=speed,
        speed_error=comparison.get("speed_error"),
        profiles=comparison.get("profiles", {}),
        machine=f"{os.cpu_count()} CPU cores ({platform.machine()})",
        sqnr_chart=line_chart(series, x_labels, "SQNR (dB)") if series else "<p>No per-layer data.</p>",
        histograms=_histograms(list(dict.fromkeys(worst_tensors)), stats or {}, _in_candidate_order(thresholds, candidates)),
        layer_images=comparison.get("layer_images", comparison["images"]),
        sensitivity=comparison.get("sensitivity"),
        sufficiency=sufficiency,
        sufficiency_chart=_sufficiency_chart(sufficiency),
        provenance=dict(provenance or {}),
        json_name=out_json.name,
    )
    document = {"comparison": _without_images(comparison), "speed": list(speed_rows),
                "provenance": dict(provenance or {}), "sufficiency": sufficiency}
    write_text_atomic(out_json, json.dumps(_json_safe(document), indent=1, default=_default) + "\n")
    write_text_atomic(out_html, html)
    return out_html, out_json


def _sufficiency_chart(sufficiency: Mapping | None) -> str | None:
    if not sufficiency or not sufficiency.get("methods"):
        return None
    methods = sufficiency["methods"]
    sizes = [str(row["images"]) for row in next(iter(methods.values()))]
    series = {label: [row["mean_change_pct"] for row in rows] for label, rows in methods.items()}
    return line_chart(series, sizes, "mean |amax change| (%)", "calibration images (bootstrap mean)",
                      height=260, tick_labels=True)


def _in_candidate_order(thresholds, candidates) -> dict:
    """Thresholds keyed like the candidates' calibrators, in candidate order, so colours match the charts."""
    thresholds = thresholds or {}
    ordered = [c["calibrator"] for c in candidates if c.get("calibrator") in thresholds]
    return {label: thresholds[label] for label in ordered}


def _default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
