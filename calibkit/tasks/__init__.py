"""Task plug-ins: what a model's outputs mean and how quantization drift is measured in their terms."""

from calibkit.tasks.base import Metric, Option, OutputInfo, Scorer, Task, TaskContext
from calibkit.tasks.registry import available_tasks, detect_task, make_task, register_task

__all__ = ["Metric", "Option", "OutputInfo", "Scorer", "Task", "TaskContext", "available_tasks", "detect_task",
           "make_task", "register_task"]
