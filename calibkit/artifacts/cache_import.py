"""TensorRT calibration caches from other tools read back as calibkit ranges, for users moving from
TensorRT 10's implicit INT8 (calibrators and caches) to TensorRT 11's explicit Q/DQ models.

trtexec, Polygraphy, Ultralytics and TensorRT's own calibrators all write the cache TensorRT's
``IInt8Calibrator.write_calibration_cache`` hands them: a ``TRT-<version>-<Algorithm>`` line, then
``tensor: <hex of the float32 scale>``, scale = amax / 127 (:mod:`calibkit.artifacts.trt_cache`). Entries
name the network's tensors, which for a network parsed from ONNX are the ONNX tensor names, plus tensors
the parser made itself (``(Unnamed Layer* 12) [Shuffle]_output``), which have no ONNX counterpart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from calibkit import __version__
from calibkit.artifacts.ranges_json import FORMAT
from calibkit.artifacts.trt_cache import read_cache
from calibkit.errors import CalibkitError
from calibkit.fileio import write_text_atomic
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import file_sha256

# A cache whose ONNX-named entries mostly miss the model was written for another model.
MIN_MATCHED_SHARE = 0.5
# Names TensorRT gives tensors its parser created; they never match an ONNX tensor.
PARSER_MADE = "(Unnamed Layer"


@dataclass(frozen=True)
class ImportedCache:
    """What an import matched: the ranges JSON written, the entries kept and those matching no tensor."""

    out: Path
    matched: list[str]
    unmatched: list[str]
    algorithm: str
    version: int


def import_cache(cache: Path, model: Path, out: Path) -> ImportedCache:
    """Write the ranges of ``cache`` that name tensors of ``model`` (its normalised graph, which calibkit
    quantizes) to ``out`` as a calibkit ranges JSON; refuse a cache made for another model."""
    parsed = read_cache(cache)
    graph = normalized_model(Path(model)).model
    names = {name for node in graph.graph.node for name in node.output} | {i.name for i in graph.graph.input}
    matched = [name for name in parsed.scales if name in names]
    unmatched = [name for name in parsed.scales if name not in names]
    onnx_named = [name for name in parsed.scales if not name.startswith(PARSER_MADE)]
    if not matched or len(matched) < MIN_MATCHED_SHARE * len(onnx_named):
        raise CalibkitError(f"{cache}: {len(matched)} of its {len(onnx_named)} tensor entries name tensors of {model}, "
                            "so it was written for another model; pass the ONNX model the cache was calibrated on")
    tensors = {}
    for name in matched:
        amax = parsed.scales[name] * 127.0
        tensors[name] = {"amax": amax, "scale": parsed.scales[name], "min": -amax, "max": amax, "fallback": None,
                         "clipped": 0.0}
    document = {
        "format": FORMAT, "calibkit_version": __version__, "method": "imported-cache",
        "params": {"algorithm": parsed.algorithm, "trt_version": parsed.version},
        "trt_algorithm": parsed.algorithm,
        "provenance": {"model": Path(model).name, "model_sha256": file_sha256(Path(model)),
                       "imported from": str(cache), "cache_sha256": file_sha256(Path(cache)),
                       "unmatched entries": unmatched,
                       "note": "min and max are not in a cache: they are written as -amax and amax"},
        "tensors": tensors,
    }
    write_text_atomic(Path(out), json.dumps(document, indent=1) + "\n")
    return ImportedCache(Path(out), matched, unmatched, parsed.algorithm, parsed.version)
