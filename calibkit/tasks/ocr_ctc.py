"""CTC text recognition: greedy decoding of [N, T, C] outputs, exact-string agreement and character
error rate against FP32's reading (symbol indices, so no character dictionary is needed)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.tasks.base import Metric, Option, Scorer, Task, TaskContext
from calibkit.tasks.registry import register_task


def ctc_greedy(probabilities: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Best path per row of [N, T, C]: argmax per step, repeats collapsed, blanks removed."""
    best = np.asarray(probabilities).argmax(axis=-1)
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    return [tuple(int(v) for v in row[mask]) for row, mask in zip(best, keep)]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1), one row at a time."""
    previous = np.arange(len(b) + 1)
    b_array = np.asarray(b)
    for i, symbol in enumerate(a, start=1):
        substitution = previous[:-1] + (b_array != symbol)
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(substitution, previous[1:] + 1)
        # insertions chain left to right: a running minimum of (value - index) restores them
        current = np.minimum.accumulate(current - np.arange(len(current))) + np.arange(len(current))
        previous = current
    return int(previous[-1])


class CtcScorer(Scorer):
    """Running counts. ``exact`` counts only lines FP32 reads as text: two empty readings agree on
    nothing, so a recogniser that reads every line as empty scores 0, not the share of blank lines."""

    def __init__(self) -> None:
        self.lines = 0
        self.read = 0
        self.exact = 0
        self.edits = 0
        self.characters = 0
        self.empty = 0

    def add(self, reference: Sequence[tuple], candidate: Sequence[tuple], batch: Batch) -> None:
        for ref, cand in zip(reference, candidate):
            self.lines += 1
            self.read += bool(ref)
            self.exact += bool(ref) and ref == cand
            self.edits += edit_distance(ref, cand)
            self.characters += len(ref)
            self.empty += not cand

    def merge(self, other: "CtcScorer") -> None:
        self.lines += other.lines
        self.read += other.read
        self.exact += other.exact
        self.edits += other.edits
        self.characters += other.characters
        self.empty += other.empty

    def result(self) -> dict[str, float | None]:
        return {
            "exact": 100 * self.exact / self.read if self.read else None,
            "cer": 100 * self.edits / max(self.characters, 1),
            "empty": 100 * self.empty / max(self.lines, 1),
        }


@register_task
class OcrCtc(Task):
    name = "ocr-ctc"
    description = "text-line recogniser with a CTC head: [N, T, symbols]"
    metrics = (
        Metric("exact", "lines FP32 reads, read exactly %", True),
        Metric("cer", "character error rate vs FP32 %", False),
        Metric("empty", "lines read as empty %", False, versus_fp32=False),
    )
    unusable_if = ("cer>20",)
    options = {
        "blank": Option(int, 0, "index of the CTC blank symbol"),
        "output": Option(str, "", "name of the [N, T, C] output (default: the first 3-D output)"),
    }

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.output = self.select_output(3, "[N, T, symbols]").name

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[tuple[int, ...]]:
        return ctc_greedy(outputs[self.output], self.settings["blank"])

    def scorer(self) -> CtcScorer:
        return CtcScorer()

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        return float(result["cer"]), "cer"
