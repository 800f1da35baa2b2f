"""What a command warned, kept for its artefacts: every warning the terminal shows belongs in the run's
``summary.json`` and in the report too, not on the terminal only."""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_ACTIVE: list[list[str]] = []


@contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """Collect the text of every warning shown inside the block, in order and once each, while still
    showing it as before. Nested blocks share the outermost list, so a report written inside a command
    lists everything that command has warned so far."""
    if _ACTIVE:
        yield _ACTIVE[0]
        return
    seen: list[str] = []
    # catch_warnings also resets the once-per-location registry, so a second run in one notebook warns again
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            merge(seen, [str(message)])
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        _ACTIVE.append(seen)
        try:
            yield seen
        finally:
            _ACTIVE.pop()


def merge(into: list[str], more: Iterable[str]) -> list[str]:
    """Append the lines of ``more`` that ``into`` does not hold yet."""
    into.extend(text for text in more if text not in into)
    return into


def warned_so_far() -> list[str]:
    """The warnings of the outermost :func:`recorded_warnings` block running now (none outside one)."""
    return list(_ACTIVE[0]) if _ACTIVE else []


def recording(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` inside :func:`recorded_warnings`, so :func:`warned_so_far` holds what it warned."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with recorded_warnings():
            return fn(*args, **kwargs)

    return run
