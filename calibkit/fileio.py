"""Where calibkit writes: atomic outputs (complete under their final name or absent) and its cache folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
import zipfile
from typing import Iterator, Mapping

import numpy as np

from calibkit.errors import CalibkitError


# Failures of the disk rather than of calibkit: a full disk or quota, a file-size limit, a read-only mount.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def cache_dir() -> Path:
    """``$CALIBKIT_HOME`` or ``~/.cache/calibkit``: exported models and built engines, never in git."""
    return Path(os.environ.get("CALIBKIT_HOME", Path.home() / ".cache" / "calibkit"))


def ensure_writable_dir(path: Path, fix: str = "choose another --out") -> Path:
    """Create ``path`` if needed and fail with a one-line message ending in ``fix`` when it cannot be
    written. Writability is tried with a real file: permission bits say nothing for root, /proc or a
    read-only mount."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalibkitError(f"{path}: cannot create output folder ({exc.strerror}); {fix}") from exc
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CalibkitError(f"{path}: output folder is not writable ({exc.strerror}); {fix}") from exc
    return path


def check_writable_file(path: Path) -> Path:
    """Like :func:`ensure_writable_file`, but makes no folder: tried in the nearest folder that exists, so a
    command that fails later leaves no empty folder behind."""
    path = _not_a_folder(path)
    existing = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not existing.is_dir():
        raise CalibkitError(f"{existing}: is a file, so {path} cannot be written; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise CalibkitError(f"{existing}: not writable ({exc.strerror}), so {path} cannot be written; "
                            "choose another path") from exc
    return path


def ensure_writable_file(path: Path) -> Path:
    """Fail early, with one line naming ``path``, when it is a folder or its folder cannot take a new file."""
    path = _not_a_folder(path)
    ensure_writable_dir(path.parent, fix=f"choose another path than {path}")
    return path


def _not_a_folder(path: Path) -> Path:
    """``path``, refused with one line where a folder stands at it (a file is to be written there)."""
    path = Path(path)
    if path.is_dir():
        raise CalibkitError(f"{path}: is a folder, and a file is written here; pass the path of a file")
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600."""
    final = ensure_writable_file(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            raise CalibkitError(f"{final}: cannot be written ({exc.strerror}); free some space or choose another "
                                "output path") from exc
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(final: Path, text: str) -> Path:
    """Write ``text`` to ``final`` atomically (UTF-8, ``\\n`` line endings)."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(final)


def write_npz_atomic(final: Path, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> Path:
    """Write ``arrays`` (and ``meta`` as JSON, member ``meta``) as a compressed ``.npz`` that ``numpy.load``
    and :func:`read_npz` read, atomically and byte for byte the same for the same content:
    ``numpy.savez_compressed`` stamps each member with the current time."""
    if meta is not None:
        arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    with atomic_path(final) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                member.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(member, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return Path(final)


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of an ``.npz`` written by :func:`write_npz_atomic`, and its JSON ``meta``."""
    with np.load(path) as data:
        arrays = dict(data)
    return arrays, json.loads(arrays.pop("meta").tobytes())
