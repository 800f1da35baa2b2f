"""The engine check of a command: every model built for one target, compared with the FP16 engine, as
the JSON section the report shows under "What TensorRT builds" and the lines the terminal prints."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from calibkit.engine import builder
from calibkit.engine.check import EngineCheck, EngineModel, build, choose_target
from calibkit.errors import CalibkitError
from calibkit.progress import progress

PARALLEL_BUILDS = 2


@dataclass(frozen=True)
class EngineSettings:
    """What the engine check does: on by default where TensorRT-RTX is installed (``enabled=None``),
    for which target, and whether the engines are kept as files."""

    enabled: bool | None = None
    target: str | None = None
    write_engines: bool = False

    def resolved(self) -> "EngineSettings | None":
        """These settings checked (target known, TensorRT-RTX installed when asked for), or None when the
        check is off; called before any expensive pass."""
        if self.enabled is False:
            return None
        if not builder.available():
            if self.enabled or self.write_engines or self.target:
                raise CalibkitError(f"the engine check needs TensorRT-RTX: {builder.INSTALL_HINT}, or pass "
                                    "--no-engine-check")
            return None
        return EngineSettings(True, choose_target(self.target), self.write_engines)


def check_engines(models: Sequence[EngineModel], shape: Sequence[int], settings: EngineSettings,
                  engine_dir: Path | None = None) -> dict:
    """Build every model for ``settings.target``; the report section, with kernels and size against the
    FP16 engine and a warning for every INT8 node that runs float."""
    engine_dir = engine_dir if settings.write_engines else None
    def one(model: EngineModel) -> EngineCheck:
        check = build(model, shape, settings.target, engine_dir)
        bar.update(1)
        return check

    # each build is one single-threaded child process: two at a time keep both cores busy
    with progress(len(models), f"TensorRT-RTX builds for {settings.target}", unit="model") as bar, \
            ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
        checks = list(pool.map(one, models))
    fp16 = next((c for c in checks if c.precision == "fp16" and c.built), None)
    documents = []
    for check in checks:
        document = check.to_dict()
        document["versus_fp16"] = _versus_fp16(check, fp16)
        documents.append(document)
        if not check.built or check.fell_to_float:
            warnings.warn(f"TensorRT-RTX, {check.name}: {check.verdict()}", stacklevel=2)
    target = settings.target
    return {"target": target, "capability": builder.TARGETS[target][0], "gpus": builder.TARGETS[target][1],
            "tensorrt_rtx_version": builder.version(), "input_shape": list(shape), "models": documents}


# What varies between two builds of the same models: the clock, the builder's memory, where files lie.
_VARYING = ("build_s", "builder_peak_rss_gb")


def reproducible(section: dict) -> dict:
    """``section`` as a run folder keeps it: byte-identical for the same models (no build times or
    memory peaks, files by name; the report keeps those)."""
    def kept(model: dict) -> dict:
        named = {key: Path(model[key]).name for key in ("model", "engine_file") if model.get(key)}
        return {**{k: v for k, v in model.items() if k not in _VARYING}, **named}

    return {**section, "models": [kept(m) for m in section["models"]]}


def _versus_fp16(check: EngineCheck, fp16: EngineCheck | None) -> dict | None:
    """Kernels and engine size against the FP16 engine, with the reason where INT8 is the larger."""
    if fp16 is None or not check.built or check.precision != "int8":
        return None
    padding = check.padding.get("bytes", 0)
    reason = None
    if check.engine_bytes > fp16.engine_bytes:
        fed = check.padding.get("depthwise_fed", [])
        reason = (f"Its layer list declares {padding / 1e6:.1f} MB of activation-sized Int8 constants in the generated "
                  f"kernels in front of {len(fed)} INT8 depthwise convolutions (TensorRT-RTX lays each depthwise "
                  "channel out padded to four for its INT8 kernels, weights [C,4,k,k]), the likely reason; the "
                  "FP16 engine has none, and the engine file holds them in less than they declare" if padding and fed else
                  "larger than the FP16 engine; the layer list shows no activation-sized constants to explain it")
    return {"kernels": fp16.kernels, "kernel_ratio": round(check.kernels / max(fp16.kernels, 1), 2),
            "engine_mb": round(fp16.engine_bytes / 1e6, 3),
            "size_ratio": round(check.engine_bytes / max(fp16.engine_bytes, 1), 2), "larger_because": reason}


def engine_lines(section: dict | None) -> list[str]:
    """One terminal line per built model: verdict, kernels and size."""
    if not section:
        return []
    lines = [f"TensorRT-RTX {section['tensorrt_rtx_version']} engines for {section['target']} "
             f"({section['gpus']}; structure, not speed):"]
    for model in section["models"]:
        size = f"; {model['kernels']} kernels, engine {model['engine_mb']:.1f} MB" if model["built"] else ""
        lines.append(f"  {model['name']}: {model['verdict']}{size}")
    return lines
