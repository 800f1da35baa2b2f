"""A registry of task plug-ins (``--task``), with detection from the model's outputs.

Add one without touching calibkit: subclass :class:`calibkit.tasks.base.Task`, decorate it with
``@register_task``, or expose the class under the ``calibkit.tasks`` entry-point group.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

from calibkit.errors import CalibkitError
from calibkit.plugins import load_entry_points
from calibkit.tasks.base import OutputInfo, Task, TaskContext

ENTRY_POINT_GROUP = "calibkit.tasks"
_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` selectable as ``--task cls.name``."""
    if not cls.name:
        raise CalibkitError(f"{cls.__name__}: a task needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_plugins() -> None:
    from calibkit.tasks import classification, dense, detection, generic, ocr_ctc  # noqa: F401

    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY.setdefault)


def available_tasks() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def budget_metrics_by_task() -> dict[str, tuple[str, ...]]:
    """What ``--budget-metric`` may name, per registered task with an accuracy budget."""
    _load_plugins()
    return {name: cls.budget_metrics for name, cls in sorted(_REGISTRY.items()) if cls.budget_metrics}


def detect_task(outputs: Sequence[OutputInfo], input_size: tuple[int, int],
                metadata: Mapping[str, str] | None = None) -> str:
    """The one task the model's ``task`` metadata names (:attr:`Task.exporter_tasks`), else the one whose
    ``detect`` accepts ``outputs``; ``generic`` when none or several do."""
    _load_plugins()
    declared = (metadata or {}).get("task")
    named = [name for name, cls in sorted(_REGISTRY.items()) if declared and declared in cls.exporter_tasks]
    if len(named) == 1:
        return named[0]
    matches = [name for name, cls in sorted(_REGISTRY.items()) if name != "generic" and cls.detect(outputs, input_size)]
    if len(matches) == 1:
        return matches[0]
    shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
    warnings.warn(
        f"outputs ({shapes}) do not say which task this model performs; comparing outputs only. "
        f"Pass --task with one of: {', '.join(available_tasks())}", stacklevel=2,
    )
    return "generic"


def make_task(name: str | None, context: TaskContext) -> Task:
    """The task ``name`` (detected from the outputs when ``None`` or ``auto``), set up for ``context``."""
    _load_plugins()
    if name in (None, "auto"):
        name = detect_task(context.outputs, context.input_size, context.metadata)
    if name not in _REGISTRY:
        raise CalibkitError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return _REGISTRY[name](context)
