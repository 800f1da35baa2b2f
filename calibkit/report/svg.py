"""Tiny inline-SVG charts, so the report needs no JavaScript library and opens offline.

Colours are passed in by name (one colour per method across every chart of a report: see
:func:`calibkit.colours.method_colours`); a series without one falls back to grey.
"""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

from calibkit.colours import FALLBACK, method_colours

__all__ = ["axis_range", "histogram_chart", "index_ticks", "line_chart", "method_colours"]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def axis_range(values: Sequence[float], floor: float | None = None) -> tuple[float, float]:
    """Padded [lo, hi] of the finite ``values``; ``floor`` pins the low end (e.g. 0 for a zero-based axis)."""
    values = _finite(values)
    if not values:
        return (floor or 0.0), (floor or 0.0) + 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    return (lo - pad if floor is None else floor), hi + pad


def line_chart(series: Mapping[str, Sequence[float]], x_labels: Sequence[str], y_label: str,
               x_label: str = "layer (network depth)", width: int = 900, height: int = 300,
               tick_labels: bool = False, colours: Mapping[str, str] | None = None,
               x_values: Sequence[float] | None = None, log_x: bool = False,
               y_range: tuple[float, float] | None = None, rules: Mapping[float, str] | None = None,
               x_ticks: Mapping[int, str] | None = None, marks: Mapping[int, str] | None = None) -> str:
    """One polyline per series; hovering a point shows its x label and value.

    Points sit at evenly spaced positions, or at ``x_values`` (on a log scale with ``log_x``).
    ``y_range`` fixes the axis (to compare small multiples); ``rules`` draws a dashed horizontal line
    per ``{y: caption}``; ``x_ticks`` labels some positions ``{index: text}`` under the axis (``tick_labels``
    labels them all); ``marks`` writes ``{index: text}`` beside the first series' point there."""
    colours = colours or {}
    if tick_labels:
        x_ticks = dict(enumerate(x_labels))
    left, right, top, bottom = 60, 160, 15, 44 if x_ticks else 30
    lo, hi = y_range or axis_range([v for vs in series.values() for v in vs] + list(rules or {}))
    if x_values is not None:
        xs = [math.log10(v) if log_x else float(v) for v in x_values]
        x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        sx = lambda i: left + (xs[i] - x_lo) * (width - left - right) / (x_hi - x_lo)  # noqa: E731
    else:
        n = max(len(x_labels), 2)
        sx = lambda i: left + i * (width - left - right) / (n - 1)  # noqa: E731
    sy = lambda v: top + (hi - min(max(v, lo), hi)) * (height - top - bottom) / (hi - lo)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img">']
    parts += _y_grid(lo, hi, sy, left, width - right, rules or {})
    parts.append(f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
                 f'{escape(y_label)}</text>')
    parts.append(f'<text x="{(width - right + left) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    for i, label in (x_ticks or {}).items():
        parts.append(f'<line x1="{sx(i):.1f}" x2="{sx(i):.1f}" y1="{height - bottom}" y2="{height - bottom + 4}" '
                     f'stroke="#999"/><text x="{sx(i):.1f}" y="{height - bottom + 15}" text-anchor="middle">'
                     f'{escape(label)}</text>')
    first = next(iter(series.values()), [])
    for i, label in (marks or {}).items():
        if i < len(first) and first[i] is not None and math.isfinite(first[i]):
            anchor = "end" if sx(i) > (width - right + left) / 2 else "start"
            shift = -5 if anchor == "end" else 5
            parts.append(f'<text x="{sx(i) + shift:.1f}" y="{sy(first[i]) + 4:.1f}" text-anchor="{anchor}" '
                         f'class="mark">{escape(label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        parts += _polyline(name, values, x_labels, colours.get(name, FALLBACK), sx, sy,
                           (width - right + 10, top + 16 * index))
    parts.append("</svg>")
    return "".join(parts)


def _y_grid(lo: float, hi: float, sy, left: float, right: float, rules: Mapping[float, str]) -> list[str]:
    """Five labelled grid lines from ``lo`` to ``hi`` and a dashed, captioned line per rule."""
    parts = []
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for value, caption in rules.items():
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555" '
                     f'stroke-dasharray="5,4"/><text x="{right - 4}" y="{y - 4:.1f}" text-anchor="end" '
                     f'fill="#555">{escape(caption)}</text>')
    return parts


def _polyline(name: str, values: Sequence[float | None], x_labels: Sequence[str], colour: str, sx, sy,
              legend: tuple[float, float]) -> list[str]:
    """One series: its line over the finite values, a point with a hover title on each, its legend entry."""
    points = [(sx(i), sy(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>']
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v):
            parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="2.2" fill="{colour}">'
                         f"<title>{escape(x_labels[i])}: {v:.2f}</title></circle>")
    x, y = legend
    parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>')
    parts.append(f'<text x="{x + 15}" y="{y + 9}">{escape(name)}</text>')
    return parts


def index_ticks(count: int, most: int = 10) -> dict[int, str]:
    """Positions 0, step, 2 step, ... of ``count`` points at a round step (1, 2 or 5 times a power of ten)
    giving at most ``most`` ticks, labelled with their index."""
    step = next(factor * 10 ** power for power in range(12) for factor in (1, 2, 5) if count <= factor * 10 ** power * most)
    return {i: str(i) for i in range(0, count, step)}


def histogram_chart(counts: Sequence[float], upper: float, thresholds: Mapping[str, float],
                    colours: Mapping[str, str] | None = None, width: int = 420, height: int = 170) -> str:
    """Bars of an |x| histogram over [0, upper], heights on a log scale with ticks at 1, 10, 100, ...
    values, and a vertical line per calibrator threshold in the calibrator's colour."""
    colours = colours or {}
    left, right, top, bottom = 40, 10, 10, 22
    heights = [math.log10(1 + c) for c in counts]
    peak = max(heights) or 1.0
    bar = (width - left - right) / len(counts)
    base = height - bottom
    scale = lambda h: base - h / peak * (base - top)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart hist" role="img">']
    for power in range(0, int(peak) + 1):
        y = scale(math.log10(1 + 10 ** power))
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_count_label(10 ** power)}</text>')
    for i, h in enumerate(heights):
        if h:
            y = scale(h)
            parts.append(f'<rect x="{left + i * bar:.2f}" y="{y:.1f}" width="{max(bar, 0.6):.2f}" '
                         f'height="{base - y:.1f}" fill="#9ab"/>')
    for index, (name, amax) in enumerate(thresholds.items()):
        x = left + min(amax / upper, 1.0) * (width - left - right) if upper else left
        colour = colours.get(name, FALLBACK)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{base}" stroke="{colour}" stroke-width="1.5">'
                     f"<title>{escape(name)}: amax {amax:.4g}</title></line>")
        parts.append(f'<text x="{width - right}" y="{top + 10 + 12 * index}" text-anchor="end" fill="{colour}">'
                     f"{escape(name)} {amax:.3g}</text>")
    parts.append(f'<text x="{left}" y="{height - 6}">0</text>'
                 f'<text x="{width - right}" y="{height - 6}" text-anchor="end">|x| {upper:.3g}</text></svg>')
    return "".join(parts)


def _count_label(count: int) -> str:
    return f"{count // 1_000_000}M" if count >= 1_000_000 else f"{count // 1000}k" if count >= 1000 else str(count)
