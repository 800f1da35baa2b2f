"""Every option of a calibration in one validated object: built by the CLI and by notebooks alike, and
checked once, before any model is loaded or image read (as scikit-learn checks an estimator's parameters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from calibkit.artifacts.trt_cache import DEFAULT_TRT_VERSION
from calibkit.backends import require
from calibkit.calib.registry import Calibrator, parse_methods
from calibkit.calib.weights import check_rounding
from calibkit.data.images import ImageItem
from calibkit.data.preprocess import Preprocess
from calibkit.distributed import check_backend
from calibkit.engine.summary import EngineSettings
from calibkit.errors import CalibkitError
from calibkit.fileio import ensure_writable_dir
from calibkit.run_folder import check_out_folder
from calibkit.samplers.registry import get_sampler
from calibkit.stats import MEMORY_BUDGET


@dataclass(frozen=True)
class CalibrationConfig:
    """What :func:`calibkit.workflow.calibrate` does, option by option (its docstring says what each does).

    Construction checks every option's type, range and name against the registries, the backend and the
    output folder: a bad value is one error line before any work. ``calibrators`` is what ``methods``
    names, parsed."""

    model: Path
    images: Path | Sequence[ImageItem]
    out: Path
    methods: str = "entropy2"
    samples: int | None = 500
    sampler: str = "random"
    seed: int = 0
    preprocess: Preprocess | str | None = None
    batch_size: int | None = None
    skip_bad: bool = False
    labels: Path | None = None
    trt_version: int = DEFAULT_TRT_VERSION
    exclude: Sequence[str] = ()
    shard_size: int | None = 50
    report_coverage: bool = True
    equalize_depthwise: bool = True
    weight_rounding: str = "gptq"
    bias_correction: bool = True
    backend: str = "ort-cpu"
    ray: str | None = None
    engines: EngineSettings | None = None
    force: bool = False
    memory_budget: int = MEMORY_BUDGET
    calibrators: dict[str, Calibrator] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_field = object.__setattr__.__get__(self)
        set_field("model", Path(self.model))
        set_field("out", Path(self.out))
        set_field("exclude", tuple(self.exclude))
        set_field("calibrators", {c.label: c for c in parse_methods(self.methods)})
        check_rounding(self.weight_rounding)
        check_backend(self.ray, self.backend)
        require(self.backend, lambda info: info.stats_batch is not None, "the statistics pass")
        check_out_folder(self.out, self.force)
        ensure_writable_dir(self.out.parent)
        get_sampler(self.sampler)
        # 0 means "all images" (samples) or "the backend's own" (batch_size) or "no shards" (shard_size)
        _check_whole_numbers(self, samples=0, seed=0, batch_size=0, shard_size=0, memory_budget=1)


@dataclass(frozen=True)
class ComparisonOptions:
    """How :func:`calibkit.workflow.compare_and_report` judges, ranks and times the candidates (its
    docstring says what each does), checked on construction like :class:`CalibrationConfig`; the rules
    and the budget metric are checked against the task by :meth:`rules`."""

    fail_on: Sequence[str] = ()
    unusable_if: Sequence[str] | None = None
    batch_size: int = 8
    skip_bad: bool = False
    batch_sizes: Sequence[int] = (1, 8, 32)
    run: object | None = None  # the CalibrationRun the candidates come from, for the report's calibration sections
    note: str | None = None
    accuracy_budget: float | None = None
    sensitivity_images: int = 100
    budget_metric: str = "auto"
    backend: str = "ort-cpu"
    ray: str | None = None
    engines: EngineSettings | None = None
    layer_images: int | None = None
    layer_seconds: float | None = None

    def __post_init__(self) -> None:
        require(self.backend)
        check_backend(self.ray, self.backend)
        _check_whole_numbers(self, batch_size=1, sensitivity_images=1, layer_images=0)
        if any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise CalibkitError(f"batch_sizes must be whole numbers of at least 1, not {list(self.batch_sizes)}")
        if self.accuracy_budget is not None and not self.accuracy_budget >= 0:
            raise CalibkitError(f"accuracy_budget must be at least 0, not {self.accuracy_budget!r}")
        if self.layer_seconds is not None and not self.layer_seconds > 0:
            raise CalibkitError(f"layer_seconds must be positive, not {self.layer_seconds!r}")

    def rules(self, task) -> tuple:
        """The task's verdict rules with ``unusable_if`` and the ``fail_on`` gates, and the budget metric,
        checked against ``task``'s metrics before any inference."""
        from calibkit.tasks.verdict import rules_for

        rules = rules_for(task, self.fail_on, self.unusable_if)
        if self.accuracy_budget is not None:
            task.check_budget_metric(self.budget_metric)
        return rules


def _check_whole_numbers(options: object, **lowest: int) -> None:
    """One error line for the first of ``options``' fields named in ``lowest`` that is set but is not a whole
    number of at least its bound (``None`` leaves an option unset)."""
    for name, low in lowest.items():
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise CalibkitError(f"{name} must be a whole number of at least {low}, not {value!r}")
