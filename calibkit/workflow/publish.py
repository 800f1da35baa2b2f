"""The comparison's report as it grows: written again at each step with every warning so far, and kept
beside the earlier report until it is complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from calibkit.compare.results import Comparison
from calibkit.memory import peak_rss_gb
from calibkit.notices import merge, warned_so_far
from calibkit.progress import log
from calibkit.tasks.base import Task


def partial_report(report: Path) -> Path:
    """Where a finished comparison waits for its per-layer drift: beside ``report``, which keeps the
    earlier report whole until this one is complete (after an interrupt, both are there)."""
    return Path(report).with_name(f"{Path(report).stem}.partial.html")


class Publisher:
    """Writes the report (HTML and JSON) as the comparison grows: each time with every warning so far, the
    recommendation and the peak memory of the command up to then. A comparison still waiting for its
    per-layer pass goes to :func:`partial_report`; the first complete one replaces the report and
    removes the partial one."""

    def __init__(self, report: Path, task: Task, earlier_warnings: Sequence[str], provenance: dict,
                 extras: dict) -> None:
        self.report, self.task, self.earlier = Path(report), task, list(earlier_warnings)
        self.provenance, self.extras = provenance, extras

    def __call__(self, comparison: Comparison, speed: Sequence[dict] = ()) -> None:
        from calibkit.report.html import write_report
        from calibkit.tasks.verdict import recommendation

        self.provenance["peak RSS so far (GB)"] = f"{peak_rss_gb():.2f}"
        comparison.warnings = merge(list(self.earlier), warned_so_far())
        comparison.recommendation = recommendation(self.task, comparison.candidates, speed)
        pending, partial = comparison.layers_pending, partial_report(self.report)
        write_report(partial if pending else self.report, comparison, list(speed), provenance=dict(self.provenance),
                     **self.extras)
        if pending:
            log(f"comparison written to {partial}; the per-layer drift follows, then {self.report.name}")
            return
        if is_partial_report(partial):
            for path in (partial, partial.with_suffix(".json")):
                path.unlink(missing_ok=True)


def is_partial_report(path: Path) -> bool:
    """True when ``path`` is a comparison calibkit wrote to wait for its per-layer pass (never a user's file)."""
    try:
        document = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and bool(document.get("comparison", {}).get("layers_pending"))
