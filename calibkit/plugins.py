"""Plug-ins from installed packages: every registry's entry-point group, loaded once per process."""

from __future__ import annotations

from importlib import metadata
from typing import Callable

_loaded_groups: set[str] = set()


def load_entry_points(group: str, add: Callable[[str, object], object]) -> None:
    """Call ``add(name, loaded object)`` for each entry point of ``group``, the first time only."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for entry in metadata.entry_points(group=group):
        add(entry.name, entry.load())
