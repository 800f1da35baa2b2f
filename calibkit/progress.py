"""Progress bars and warnings on stderr.

Bars show only where someone watches: a terminal or a notebook. They are off with ``--quiet`` (or
``CALIBKIT_QUIET=1``) and whenever stderr is a file or a pipe, so logs get the command's summary lines
instead of thousands of carriage returns.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

QUIET_ENV = "CALIBKIT_QUIET"


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (and of the processes it starts)."""
    if quiet:
        os.environ[QUIET_ENV] = "1"


def bars_shown() -> bool:
    """True when progress bars go to a person: not quiet, and stderr a terminal or a notebook kernel."""
    if os.environ.get(QUIET_ENV) == "1":
        return False
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def progress(total: int, desc: str, unit: str = "img") -> tqdm:
    """A bar counting ``unit`` per second, shown only when :func:`bars_shown`."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not bars_shown(), dynamic_ncols=True, leave=False)


def log(message: str) -> None:
    """``calibkit: message`` on stderr, above any bar, unless quiet: a long stage announcing itself."""
    if os.environ.get(QUIET_ENV) != "1":
        tqdm.write(f"calibkit: {message}", file=sys.stderr)


def log_line(message: str) -> None:
    """:func:`log` where no bar shows (stderr a file or a pipe): the progress of a slow stage in a log."""
    if not bars_shown():
        log(message)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: ``calibkit: warning: ...`` on its own line, above any progress bar."""
    tqdm.write(f"calibkit: warning: {message}", file=sys.stderr)
