"""Where calibkit writes: atomic outputs (complete under their final name or absent) and its cache folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from calibkit.errors import CalibkitError


def cache_dir() -> Path:
    """``$CALIBKIT_HOME`` or ``~/.cache/calibkit``: exported models and built engines, never in git."""
    return Path(os.environ.get("CALIBKIT_HOME", Path.home() / ".cache" / "calibkit"))


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and fail with a one-line message when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalibkitError(f"{path}: cannot create output folder ({exc.strerror}); choose another --out") from exc
    if not os.access(path, os.W_OK):
        raise CalibkitError(f"{path}: output folder is not writable; choose another --out")
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600."""
    final = Path(final)
    ensure_writable_dir(final.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
