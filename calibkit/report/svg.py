"""Tiny inline-SVG charts, so the report needs no JavaScript library and opens offline."""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _axis_range(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def line_chart(series: Mapping[str, Sequence[float]], x_labels: Sequence[str], y_label: str,
               x_label: str = "layer (network depth)", width: int = 900, height: int = 300,
               tick_labels: bool = False) -> str:
    """One polyline per series over shared x positions; hovering a point shows its x label and value."""
    left, right, top, bottom = 60, 160, 15, 44 if tick_labels else 30
    lo, hi = _axis_range(_finite([v for vs in series.values() for v in vs]))
    n = max(len(x_labels), 2)
    sx = lambda i: left + i * (width - left - right) / (n - 1)  # noqa: E731
    sy = lambda v: top + (hi - v) * (height - top - bottom) / (hi - lo)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img">']
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    parts.append(f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
                 f'{escape(y_label)}</text>')
    parts.append(f'<text x="{(width - right + left) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    if tick_labels:
        for i, label in enumerate(x_labels):
            parts.append(f'<text x="{sx(i):.1f}" y="{height - bottom + 14}" text-anchor="middle">{escape(label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = [(sx(i), sy(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for i, v in enumerate(values):
            if v is not None and math.isfinite(v):
                parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="2.2" fill="{colour}">'
                             f"<title>{escape(x_labels[i])}: {v:.2f}</title></circle>")
        parts.append(f'<rect x="{width - right + 10}" y="{top + 16 * index}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 25}" y="{top + 9 + 16 * index}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(counts: Sequence[float], upper: float, thresholds: Mapping[str, float],
                    width: int = 420, height: int = 170) -> str:
    """log10(1 + count) bars of an |x| histogram over [0, upper] with a vertical line per threshold."""
    left, right, top, bottom = 10, 10, 10, 22
    heights = [math.log10(1 + c) for c in counts]
    peak = max(heights) or 1.0
    bar = (width - left - right) / len(counts)
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart hist" role="img">']
    base = height - bottom
    for i, h in enumerate(heights):
        if h:
            y = base - h / peak * (base - top)
            parts.append(f'<rect x="{left + i * bar:.2f}" y="{y:.1f}" width="{max(bar, 0.6):.2f}" '
                         f'height="{base - y:.1f}" fill="#9ab"/>')
    for index, (name, amax) in enumerate(thresholds.items()):
        x = left + min(amax / upper, 1.0) * (width - left - right) if upper else left
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{base}" stroke="{colour}" stroke-width="1.5">'
                     f"<title>{escape(name)}: amax {amax:.4g}</title></line>")
        parts.append(f'<text x="{width - right}" y="{top + 10 + 12 * index}" text-anchor="end" fill="{colour}">'
                     f"{escape(name)} {amax:.3g}</text>")
    parts.append(f'<text x="{left}" y="{height - 6}">0</text>'
                 f'<text x="{width - right}" y="{height - 6}" text-anchor="end">|x| {upper:.3g}</text></svg>')
    return "".join(parts)
