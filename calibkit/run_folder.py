"""A run folder describes one calibration: what it holds, how an earlier run's files are cleared, and
the rule that commands reading a run never write into it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from calibkit.errors import CalibkitError

# Written last by ``calibrate``: a run folder without it did not finish.
SUMMARY = "summary.json"

# Files a run writes once, whatever its methods.
RUN_FILES = (SUMMARY, "stats.npz", "images.txt", "weights.npz", "model.calibrated.onnx", "model.fp16.onnx", "report.html",
             "report.json", "engine-check.json")

# TensorRT-RTX engines a run keeps (--write-engines), per calibrator label and for fp32/fp16.
ENGINES = "{label}.*.trtrtx.engine"

# Files a run writes per calibrator label, found from the label's TensorRT cache.
PER_METHOD = ("{label}.cache", "{label}.json", "{label}.qdq.onnx", "{label}.ort.onnx")
MIXED = "{label}.mixed.*"


def earlier_run_files(out: Path) -> list[Path]:
    """The files an earlier ``calibrate`` left in ``out``: only names calibkit writes, never a user's file."""
    out = Path(out)
    if not out.is_dir():
        return []
    labels = [p.name[: -len(".cache")] for p in out.glob("*.cache")]
    names = [*RUN_FILES, *(pattern.format(label=label) for label in labels for pattern in PER_METHOD)]
    found = [out / name for name in names if (out / name).is_file()]
    found += [p for label in labels for p in out.glob(MIXED.format(label=label)) if p.is_file()]
    found += [p for label in [*labels, "fp32", "fp16"] for p in out.glob(ENGINES.format(label=label)) if p.is_file()]
    return sorted(set(found))


def clear_earlier_run(out: Path) -> list[Path]:
    """Remove an earlier run's files from ``out``, its summary first, so that a run interrupted from here
    on is never taken for a finished one and no stale method is compared beside fresh ones."""
    files = earlier_run_files(out)
    for path in sorted(files, key=lambda p: p.name != SUMMARY):
        path.unlink()
    return files


def check_not_a_run(out: Path, runs: Iterable[Path]) -> None:
    """Refuse an output folder that is one of the run folders being read (inputs stay as they were)."""
    target = Path(out).resolve()
    for run in runs:
        if Path(run).resolve() == target:
            raise CalibkitError(f"--out {out} is the run folder being compared, which is left as calibrate wrote it; "
                                "choose another --out")
