"""One colour per model across a comparison: the report's charts and tables and the detection examples'
boxes take them from here, so a model is drawn in the same colour wherever it appears."""

from __future__ import annotations

from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FALLBACK = "#888"
# FP32, the reference, is drawn in black wherever candidates have their palette colours.
REFERENCE = "#222222"


def method_colours(keys: Sequence[str]) -> dict[str, str]:
    """A fixed colour per key, in first-seen order (the same key gets the same colour in every chart)."""
    unique = list(dict.fromkeys(keys))
    return {key: PALETTE[index % len(PALETTE)] for index, key in enumerate(unique)}


def colour_key(calibrator: str | None, name: str) -> str:
    """What a candidate's colour follows: its calibrator (shared with histograms and sufficiency) or name."""
    return calibrator or name
