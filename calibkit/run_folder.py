"""A run folder describes one calibration: what it holds, how a new run replaces an earlier one like a
transaction, the lock that keeps two runs out of one folder, and the rule that commands reading a run
never write into it.

A run is written into a staging folder beside ``--out`` and moved in only once it has succeeded, with
signals held back while the files move: after any failure or signal the earlier run is exactly as it
was. Only files calibkit writes are ever moved or removed; a folder holding files but no calibkit run
is refused (``--force`` writes beside them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from calibkit.errors import CalibkitError

# Written last by ``calibrate``: a run folder without it did not finish.
SUMMARY = "summary.json"

# How long each stage of a run took: kept apart from summary.json, which is byte-identical for the same inputs.
TIMINGS = "timings.json"

# Files a run writes once, whatever its methods.
RUN_FILES = (SUMMARY, TIMINGS, "stats.npz", "images.txt", "weights.npz", "model.calibrated.onnx", "model.fp16.onnx", "report.html",
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


def is_calibkit_run(out: Path) -> bool:
    """True when ``out`` holds a summary that calibkit's ``calibrate`` wrote (not a user's own file)."""
    try:
        summary = json.loads((Path(out) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "model_sha256" in summary and "methods" in summary


def check_out_folder(out: Path, force: bool = False) -> Path:
    """``out`` if a run may be written there: new, empty, an earlier calibkit run, or (``force``) beside
    files calibkit did not write; else one error line naming the files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CalibkitError(f"{out}: is a file, not a folder; choose a folder for --out")
    if force or not out.is_dir() or is_calibkit_run(out):
        return out
    foreign = sorted(p.name for p in out.iterdir())
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise CalibkitError(f"{out}: holds files no calibkit run wrote ({shown}); choose another --out (new or empty), or "
                            "pass --force to write the run beside them (they are left as they are)")
    return out


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (a run's files move in whole)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit(stage: Path, out: Path) -> None:
    """Move the staged run into ``out``: the earlier run's files out first (summary first), then the new."""
    with _signals_held():
        out.mkdir(parents=True, exist_ok=True)
        previous = earlier_run_files(out) if is_calibkit_run(out) else []
        staged = sorted(stage.iterdir(), key=lambda p: p.name == SUMMARY)
        taken = [p.name for p in staged if (out / p.name).exists() and out / p.name not in previous]
        if taken:
            raise CalibkitError(f"{out}: the run would overwrite {', '.join(taken[:5])}, which calibkit did not write "
                                "there; move them or choose another --out")
        earlier = stage / ".earlier-run"
        earlier.mkdir()
        for path in sorted(previous, key=lambda p: p.name != SUMMARY):
            os.replace(path, earlier / path.name)
        for path in staged:
            os.replace(path, out / path.name)
    if previous:
        warnings.warn(f"{out}: replaced the {len(previous)} files of an earlier run, so the folder describes this run "
                      "only", stacklevel=4)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.calibkit-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (a file beside it naming this process): a second run into the same folder is
    refused with the first one's PID; a lock left by a process that died is taken over with a note."""
    lock = _lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            text = lock.read_text(encoding="utf-8").strip() if lock.is_file() else ""
            pid = int(text) if text.isdigit() else 0
            if pid and _alive(pid):
                raise CalibkitError(f"{out}: another calibkit run (PID {pid}) is writing this folder; wait for it to "
                                    f"finish or choose another --out (lock: {lock})") from None
            warnings.warn(f"{out}: took over the lock of calibkit PID {pid or '?'}, which is no longer running",
                          stacklevel=3)
            lock.unlink(missing_ok=True)
    else:
        raise CalibkitError(f"{lock}: cannot take the run folder's lock; remove it if no calibkit run is writing {out}")
    try:
        os.write(handle, f"{os.getpid()}\n".encode())
        os.close(handle)
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextmanager
def run_transaction(out: Path, force: bool = False) -> Iterator[Path]:
    """A staging folder beside ``out`` to write a run into, locked; moved into ``out`` when the block
    succeeds, removed (with nothing of ``out`` touched) when it fails or is interrupted."""
    out = check_out_folder(out, force)
    with folder_lock(out):
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.calibkit-staging-", dir=out.parent))
        try:
            yield stage
            _commit(stage, out)
        except CalibkitError as exc:  # name the files where the user will look for them
            raise CalibkitError(str(exc).replace(str(stage), str(out))) from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def check_not_a_run(out: Path, runs: Iterable[Path]) -> None:
    """Refuse an output folder that is one of the run folders being read (inputs stay as they were)."""
    target = Path(out).resolve()
    for run in runs:
        if Path(run).resolve() == target:
            raise CalibkitError(f"--out {out} is the run folder being compared, which is left as calibrate wrote it; "
                                "choose another --out")
