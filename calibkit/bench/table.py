"""Plain-text tables for benchmark output."""

from __future__ import annotations

from typing import Mapping, Sequence


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Left-aligned text columns with a header rule."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def speed_text(row: Mapping) -> str:
    """One speed row in words: ``1.95x FP32 (rounds 1.80-2.10) at batch 8``, with ``noisy`` when flagged."""
    text = f"{row['speedup']:.2f}x FP32"
    if row.get("speedup_low") is not None:
        text += f" (rounds {row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
    text += f" at batch {row['batch']}"
    return text + (", noisy: rerun before trusting it" if row.get("noisy") else "")
