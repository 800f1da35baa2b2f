"""The report's calibration sections and provenance rows: from the run this command calibrated, or read
back from the run folder the INT8 candidates came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from calibkit.artifacts.ranges_json import read_ranges
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem
from calibkit.data.preprocess import Preprocess
from calibkit.graph.onnx_model import file_sha256
from calibkit.notices import merge
from calibkit.report.provenance import environment
from calibkit.run_folder import SUMMARY, TIMINGS
from calibkit.stats.collect import CollectedStats
from calibkit.tasks import Task
from calibkit.workflow.calibration import CalibrationRun


def report_sections(model: Path, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
                    run: CalibrationRun | None, candidates: Sequence[Candidate]) -> tuple[dict, dict]:
    """The report's calibration sections and its provenance rows (model, task, calibration, environment)."""
    provenance = {"model": str(model), "model_sha256": file_sha256(Path(model)), "images": len(items),
                  "task": task.name, "task settings": json.dumps(task.settings),
                  "preprocess": json.dumps(preprocess.to_dict())}
    extras, calibration_rows = calibration_sections(run, candidates)
    provenance.update(calibration_rows)
    provenance.update(environment([item.path for item in items]))
    return extras, provenance


def calibration_warnings(run: CalibrationRun | None, candidates: Sequence[Candidate]) -> list[str]:
    """What the calibration behind the candidates warned: ``run``'s, else each run folder's ``summary.json``."""
    if run is not None:
        return list(run.warnings)
    folders = dict.fromkeys(c.ranges.parent for c in candidates if c.ranges is not None)
    found: list[str] = []
    for folder in folders:
        if (folder / SUMMARY).is_file():
            merge(found, json.loads((folder / SUMMARY).read_text(encoding="utf-8")).get("warnings", []))
    return found


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
        timings = (json.loads((run_dir / TIMINGS).read_text(encoding="utf-8")) if (run_dir / TIMINGS).is_file()
                   else summary.get("timings", {}))  # runs before timings.json kept them in the summary
        coverage, enough = summary.get("coverage"), summary.get("sufficiency")
    rows = {f"calibration {k}": v for k, v in stats.provenance.items() if k != "preprocess"}
    rows["calibration timings (s)"] = json.dumps({k: round(v, 2) for k, v in timings.items() if k.endswith("_s")})
    if "peak_rss_gb" in timings:  # timings.json also records the run's peak memory and graph segments
        rows["calibration peak RSS (GB)"] = f"{timings['peak_rss_gb']:.2f}"
        rows["calibration graph segments"] = str(timings["statistics_graph_segments"])
    if coverage:
        rows["calibration subset coverage"] = json.dumps(coverage)
    thresholds = {label: {name: r.amax for name, r in table.items()} for label, table in ranges.items()}
    return {"stats": stats.tensors, "sufficiency": enough, "thresholds": thresholds}, rows
