"""What a run folder holds and the candidates made from it: INT8 per calibrator of a run, INT8 from one ranges
JSON, FP16; each checked against the model it was made from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from calibkit.artifacts.fp16 import export_fp16
from calibkit.artifacts.method_files import export_targets, qdq_paths
from calibkit.artifacts.ranges_json import read_ranges
from calibkit.calib.registry import get_calibrator
from calibkit.calib.weights import RefinedWeights
from calibkit.compare.run import Candidate
from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import file_sha256
from calibkit.run_folder import SUMMARY

# The FP32 graph a run calibrated, when it differs from the user's (depthwise inputs equalised).
CALIBRATED_GRAPH = "model.calibrated.onnx"

# A run's INT8 weight levels and corrected biases (:mod:`calibkit.calib.weights`), shared by its calibrators.
RUN_WEIGHTS = "weights.npz"


def check_made_from(model: Path, recorded: str | None, source: Path, noun: str) -> None:
    """Refuse ``source`` (a run or a ranges file) whose recorded model hash is not ``model``'s."""
    if recorded and recorded != file_sha256(Path(model)):
        raise CalibkitError(f"{source}: {noun} calibrated from a different model than {model} (sha256 "
                            f"{recorded[:12]}...); pass the model it was made from, or calibrate this one")


def check_run_matches(model: Path, run_dir: Path, labels: Sequence[str] = ()) -> None:
    """Refuse a run folder that is incomplete, was calibrated from another model file, or whose ranges
    files of ``labels`` another run wrote (two calibrations into one folder)."""
    summary = Path(run_dir) / SUMMARY
    if not summary.is_file():
        raise CalibkitError(f"{run_dir}: no {SUMMARY}, so the calibration did not finish; run calibkit calibrate "
                            f"--out {run_dir} again")
    document = json.loads(summary.read_text(encoding="utf-8"))
    check_made_from(model, document.get("model_sha256"), run_dir, "run")
    for label in labels:
        _, written = read_ranges(Path(run_dir) / f"{label}.json")
        recorded = written.get("provenance", {}).get("run_id")
        if recorded != document.get("run_id"):
            raise CalibkitError(f"{run_dir}: {label}.json was written by another run than {SUMMARY} (run id "
                                f"{recorded} against {document.get('run_id')}), so the folder mixes two calibrations; "
                                "calibrate again into a new --out")


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
    chosen = [method_label(label) for label in labels] if labels else found
    missing = [label for label in chosen if label not in found]
    if missing:
        raise CalibkitError(f"{run_dir}: no ranges for {', '.join(missing)}; available: {', '.join(found)}")
    check_run_matches(model, run_dir, chosen)
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


def ranges_weights(ranges_file: Path, document: Mapping, nearest: bool = False) -> RefinedWeights | None:
    """The weights a ranges JSON was calibrated with: the run's ``weights.npz`` beside it, checked against
    the hash the JSON records. A JSON that records none (an imported cache, an older run) or ``nearest``
    gets round-to-nearest weights; a recorded file that is missing or different is refused, since its
    Q/DQ model would silently differ from the run's."""
    recorded = document.get("provenance", {}).get("weights_file")
    if nearest or not recorded:
        return None
    kept = Path(ranges_file).parent / recorded["file"]
    if not kept.is_file():
        raise CalibkitError(f"{ranges_file}: its run rounded the weights into {recorded['file']}, which is not "
                            f"beside it; copy the run's {recorded['file']} next to it, or pass --nearest-weights "
                            "to round weights to nearest")
    if file_sha256(kept) != recorded["sha256"]:
        raise CalibkitError(f"{kept}: not the weights file {ranges_file.name} was calibrated with (sha256 "
                            f"{recorded['sha256'][:12]}...); copy that run's {recorded['file']} next to it, or pass "
                            "--nearest-weights to round weights to nearest")
    return RefinedWeights.load(kept)


def ranges_candidate(model: Path, ranges_file: Path, out: Path, exclude: Sequence[str] = (),
                     nearest_weights: bool = False) -> Candidate:
    """An INT8 candidate from one ranges JSON (say one ``calibkit import-cache`` wrote from a TensorRT 10
    cache), exported into ``out`` with the weights its run recorded (:func:`ranges_weights`)."""
    ranges, document = read_ranges(ranges_file)
    check_made_from(model, document.get("provenance", {}).get("model_sha256"), ranges_file, "ranges")
    weights = ranges_weights(Path(ranges_file), document, nearest_weights)
    label = Path(ranges_file).name.removesuffix(".json")
    source = run_graph(model, Path(ranges_file).parent)
    paths = export_targets(source, Path(out), label, ranges, tuple(exclude), weights)
    return Candidate(f"int8 {label}", "int8", paths["tensorrt"], paths["tensorrt"], paths["onnxruntime"], label,
                     Path(ranges_file), source, tuple(exclude))


def fp16_candidate(model: Path, out: Path) -> Candidate:
    """The FP16-cast model as a candidate (written to ``out/model.fp16.onnx``)."""
    path = export_fp16(model, Path(out) / "model.fp16.onnx")
    return Candidate("fp16", "fp16", path, path)


def run_weights(run_dir: Path) -> RefinedWeights | None:
    """The run's rounded weights and corrected biases, where it kept them."""
    kept = Path(run_dir) / RUN_WEIGHTS
    return RefinedWeights.load(kept) if kept.is_file() else None


def run_graph(model: Path, run_dir: Path) -> Path:
    """The FP32 graph a run calibrated: its ``model.calibrated.onnx`` when it kept one, else ``model``."""
    kept = Path(run_dir) / CALIBRATED_GRAPH
    return kept if kept.is_file() else Path(model)
