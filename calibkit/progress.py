"""Progress bars: tqdm on stderr, silenced with ``CALIBKIT_QUIET=1`` or ``--quiet``."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "img") -> tqdm:
    """A bar counting ``unit`` per second; disabled when quiet or when stderr is not a terminal in CI."""
    quiet = os.environ.get("CALIBKIT_QUIET") == "1"
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)
