"""The comparison's results as typed records (:class:`~calibkit.records.Record`): per task, reference,
candidate, output and layer, with the verdict (:class:`~calibkit.tasks.verdict.Verdict`), and the
``report.json`` document that holds them under a schema version. The report, the verdict and the CLI
read attributes; notebooks may still read the JSON's keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping

from calibkit.errors import CalibkitError
from calibkit.records import Record, known_fields
from calibkit.tasks.base import Metric
from calibkit.tasks.verdict import Verdict

# report.json's layout: 1 is calibkit before typed results (no version field, the same keys); 2 adds
# ``schema_version``. A loader reads every version up to this one.
SCHEMA_VERSION = 2


def _number(value):
    """A number as report.json writes it back as a float: infinities are the strings ``"inf"`` and
    ``"-inf"`` there (JSON has none) and NaN is ``null``."""
    if value is None:
        return math.nan
    return float(value) if isinstance(value, str) else value


def _metric(value):
    """A metric read back from report.json: ``null`` stays "not measured", infinities become floats."""
    return float(value) if isinstance(value, str) else value


@dataclass
class TensorDrift(Record):
    """One tensor's drift against the FP32 reference (a model output, or an inner layer)."""

    tensor: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    max_rel_error: float
    nonfinite: int

    @classmethod
    def from_dict(cls, document: Mapping) -> "TensorDrift":
        return cls(**{k: v if k in ("tensor", "nonfinite") else _number(v)
                      for k, v in known_fields(cls, document).items()})


@dataclass
class TaskSummary(Record):
    """The task that scored the comparison, its settings and its metrics."""

    name: str
    description: str
    settings: dict
    metrics: list[Metric]

    @classmethod
    def from_dict(cls, document: Mapping) -> "TaskSummary":
        return cls(**{**known_fields(cls, document), "metrics": [Metric(**m) for m in document["metrics"]]})


@dataclass
class ReferenceResult(Record):
    """The FP32 reference: its file, outputs and own (absolute) metrics."""

    model: str
    outputs: list[str]
    metrics: dict[str, float | None]


@dataclass
class CandidateResult(Record):
    """One candidate against the reference: the task's metrics and details, example images, each output's
    and (where measured) each layer's drift, and its verdict once judged."""

    name: str
    precision: str
    calibrator: str | None
    model: str
    metrics: dict[str, float | None]
    details: dict = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    outputs: list[TensorDrift] = field(default_factory=list)
    layers: list[TensorDrift] = field(default_factory=list)
    verdict: Verdict | None = None
    always: ClassVar[tuple[str, ...]] = ("calibrator",)  # an FP16 candidate says it has none

    @classmethod
    def from_dict(cls, document: Mapping) -> "CandidateResult":
        fields = known_fields(cls, document)
        fields["metrics"] = {k: _metric(v) for k, v in document["metrics"].items()}
        fields["outputs"] = [TensorDrift.from_dict(d) for d in document.get("outputs", [])]
        fields["layers"] = [TensorDrift.from_dict(d) for d in document.get("layers", [])]
        fields["verdict"] = Verdict(**document["verdict"]) if document.get("verdict") else None
        return cls(**fields)


@dataclass
class BudgetFit(Record):
    """The accuracy-budget search (:func:`calibkit.sensitivity.budget.fit_accuracy_budget`): the budget in
    the task's points of ``metric``, whether it was met, the layers kept in float, each step's loss, and
    the mixed-precision models written (by target), if any."""

    budget: float
    metric: str
    met: bool
    kept_float: list[str]
    steps: list[dict]
    models: dict[str, str]


@dataclass
class SensitivityResult(Record):
    """The layer ranking of the best INT8 candidate on a subset of images, most sensitive first, and the
    budget fitted with it; ``name`` is the mixed-precision candidate's."""

    name: str
    calibrator: str
    sensitivity_images: int
    ranking: list[dict]
    budget: BudgetFit
    seconds: dict[str, float]

    @classmethod
    def from_dict(cls, document: Mapping) -> "SensitivityResult":
        return cls(**{**known_fields(cls, document),
                      "budget": BudgetFit(**known_fields(BudgetFit, document["budget"]))})


@dataclass
class Comparison(Record):
    """Everything one comparison measured, as the report shows it. The sections after ``backend`` are
    filled by later stages (judging, the separate per-layer pass, sensitivity, the engine check, timing)
    and stay ``None`` where a stage did not run."""

    task: TaskSummary
    reference: ReferenceResult
    images: int
    skipped_images: int
    labelled: bool
    layer_images: int
    preprocess: str
    candidates: list[CandidateResult]
    timings: dict[str, float]
    backend: str
    layers_pending: int | None = None
    layer_note: str | None = None
    rules: dict[str, list[str]] | None = None
    note: str | None = None
    sensitivity: SensitivityResult | None = None
    engine: dict | None = None
    warnings: list[str] | None = None
    recommendation: str | None = None
    profiles: dict | None = None
    placement: dict | None = None
    layer_times: dict | None = None
    speed_error: str | None = None

    def candidate(self, name: str) -> CandidateResult:
        """The candidate called ``name``."""
        return next(c for c in self.candidates if c.name == name)

    @classmethod
    def from_dict(cls, document: Mapping) -> "Comparison":
        fields = known_fields(cls, document)
        fields["task"] = TaskSummary.from_dict(document["task"])
        fields["reference"] = ReferenceResult(**known_fields(ReferenceResult, document["reference"]))
        fields["candidates"] = [CandidateResult.from_dict(c) for c in document["candidates"]]
        if document.get("sensitivity"):
            fields["sensitivity"] = SensitivityResult.from_dict(document["sensitivity"])
        fields.setdefault("skipped_images", 0)
        fields.setdefault("preprocess", "")
        fields.setdefault("backend", "ort-cpu")
        fields.setdefault("timings", {})
        fields.setdefault("layer_images", document.get("images", 0))
        return cls(**fields)


@dataclass
class ReportDocument(Record):
    """``report.json``: the comparison, the speed rows, the provenance rows and the sufficiency check."""

    comparison: Comparison
    speed: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    sufficiency: dict | None = None
    always: ClassVar[tuple[str, ...]] = ("sufficiency",)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, document: Mapping, source: str = "report.json") -> "ReportDocument":
        """Read any version up to :data:`SCHEMA_VERSION`; version 1 files (no ``schema_version``) have the
        same layout."""
        version = document.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CalibkitError(f"{source}: report schema version {version!r} is newer than this calibkit reads "
                                f"({SCHEMA_VERSION}); upgrade calibkit to read it")
        if not isinstance(document.get("comparison"), Mapping):
            raise CalibkitError(f"{source}: not a calibkit report (no comparison); pass the report.json "
                                "that calibkit compare wrote")
        return cls(Comparison.from_dict(document["comparison"]), list(document.get("speed") or []),
                   dict(document.get("provenance") or {}), document.get("sufficiency"))


def load_report(path: Path) -> ReportDocument:
    """The ``report.json`` at ``path`` (any schema version calibkit wrote), as typed records."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibkitError(f"{path}: cannot read a report ({exc}); pass the report.json calibkit compare wrote")
    if not isinstance(document, Mapping):
        raise CalibkitError(f"{path}: not a calibkit report; pass the report.json calibkit compare wrote")
    return ReportDocument.from_dict(document, str(path))
