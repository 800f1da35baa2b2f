"""Progress bars: tqdm on stderr, silenced with ``CALIBKIT_QUIET=1`` or ``--quiet``."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "img") -> tqdm:
    """A bar counting ``unit`` per second; disabled when quiet or when stderr is not a terminal in CI."""
    quiet = os.environ.get("CALIBKIT_QUIET") == "1"
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: ``calibkit: warning: ...`` on its own line, above any progress bar."""
    tqdm.write(f"calibkit: warning: {message}", file=sys.stderr)
