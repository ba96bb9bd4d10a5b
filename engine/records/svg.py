"""Inline SVG for the run report: an element builder that escapes, the timeline and the line charts.

Everything here is a pure function from numbers and strings to :class:`markupsafe.Markup`; every name,
message or path that reaches an attribute or a text node goes through :func:`el`, which escapes it, so
the report can embed the result as it is. No plotting library: the report must render where only the
engine's dependencies are installed, and open in a browser with no network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

_CHAR_W = 7.0  # width of one character of the report's 12px sans-serif, for truncating labels


def el(tag: str, attrs: dict[str, object] | None = None, *children: str) -> Markup:
    """``<tag attrs>children</tag>``: attribute values and plain-``str`` children are escaped;
    ``Markup`` children (other elements) are kept. Attribute names ending in ``_`` lose it
    (``class_``); other ``_`` become ``-`` (``font_size``, ``data_node``)."""
    parts = [tag]
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        parts.append(f'{name}="{escape(_num(value) if isinstance(value, float) else str(value))}"')
    head = " ".join(parts)
    if not children:
        return Markup(f"<{head}/>")
    inner = "".join(str(escape(c)) for c in children)
    return Markup(f"<{head}>{inner}</{tag}>")


def fit(text: str, width: float) -> str:
    """``text`` cut with an ellipsis to about ``width`` pixels."""
    most = max(int(width / _CHAR_W), 2)
    return text if len(text) <= most else text[: most - 1] + "…"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value < hi + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def time_unit(span_s: float) -> tuple[float, str]:
    """The unit an axis of ``span_s`` seconds is labelled in: (seconds per unit, suffix)."""
    if span_s < 180:
        return 1.0, "s"
    if span_s < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


@dataclass(frozen=True)
class Bar:
    """One bar of the timeline: unix times, a tooltip, and a CSS class for its colour."""

    began: float
    ended: float
    tip: str
    css: str = "bar"


@dataclass
class TimelineRow:
    """A labelled row of the timeline (a node, or the nodes of one fused segment)."""

    label: str
    bars: list[Bar] = field(default_factory=list)


_ROW_H = 18.0
_LABEL_W = 230.0
_PLOT_W = 760.0
_PAD = 28.0


def timeline(rows: Sequence[TimelineRow], t0: float, t1: float) -> Markup:
    """A Gantt chart of ``rows`` over ``[t0, t1]``; bars that overlap in time stack in lanes of their row."""
    t1 = max(t1, t0 + 1e-3, *(b.ended for r in rows for b in r.bars))
    scale, unit = time_unit(t1 - t0)
    ticks = nice_ticks(0.0, (t1 - t0) / scale, 8)
    t1 = max(t1, t0 + ticks[-1] * scale)
    span = t1 - t0

    def x(t: float) -> float:
        return _LABEL_W + (t - t0) / span * _PLOT_W

    bands: list[str] = []  # drawn first, under the grid
    body: list[str] = []
    y = _PAD
    for index, row in enumerate(rows):
        lanes = _lanes(row.bars)
        height = max(len(lanes), 1) * _ROW_H
        bands.append(
            el(
                "rect",
                {
                    "class_": "row-band" + (" odd" if index % 2 else ""),
                    "x": 0.0,
                    "y": y,
                    "width": _LABEL_W + _PLOT_W,
                    "height": height,
                },
            )
        )
        body.append(
            el(
                "text",
                {"class_": "row-label", "x": 6.0, "y": y + _ROW_H / 2 + 4},
                fit(row.label, _LABEL_W - 12),
                el("title", None, row.label),
            )
        )
        for lane, bars in enumerate(lanes):
            for bar in bars:
                left = x(bar.began)
                body.append(
                    el(
                        "rect",
                        {
                            "class_": bar.css,
                            "x": left,
                            "y": y + lane * _ROW_H + 3,
                            "width": max(x(bar.ended) - left, 1.5),
                            "height": _ROW_H - 6,
                            "rx": 2.0,
                        },
                        el("title", None, bar.tip),
                    )
                )
        y += height
    axis = _time_axis(ticks, scale, unit, lambda offset: x(t0 + offset), _PAD, y)
    return el(
        "svg",
        _frame(_LABEL_W + _PLOT_W + 16, y + 8, "timeline"),
        *bands,
        *axis,
        *body,
    )


def _lanes(bars: Sequence[Bar]) -> list[list[Bar]]:
    """Bars packed greedily into the fewest lanes in which none overlaps another."""
    lanes: list[list[Bar]] = []
    ends: list[float] = []
    for bar in sorted(bars, key=lambda b: (b.began, b.ended)):
        for i, end in enumerate(ends):
            if end <= bar.began:
                lanes[i].append(bar)
                ends[i] = bar.ended
                break
        else:
            lanes.append([bar])
            ends.append(bar.ended)
    return lanes


def _time_axis(
    ticks: Sequence[float], scale: float, unit: str, x: Callable[[float], float], top: float, bottom: float
) -> list[str]:
    """Grid lines and labels at ``ticks`` (in ``unit`` since the start); ``x`` maps seconds to pixels."""
    out: list[str] = []
    for tick in ticks:
        px = x(tick * scale)
        out.append(el("line", {"class_": "grid", "x1": px, "x2": px, "y1": top - 4, "y2": bottom}))
        label = {"class_": "tick", "x": px, "y": top - 8, "text_anchor": "middle"}
        out.append(el("text", label, _label(tick, unit)))
    return out


def line_chart(
    points: Sequence[tuple[float, float]],
    t0: float,
    t1: float,
    *,
    title: str,
    y_label: str,
    money: bool = False,
    css: str = "series",
) -> Markup:
    """A step line of a cumulative series ``points`` (unix time, value) over ``[t0, t1]``, with axes."""
    width, height = 470.0, 240.0
    left, right, top, bottom = 64.0, 16.0, 30.0, 40.0
    t1 = max(t1, t0 + 1e-3, *(t for t, _ in points))
    scale, unit = time_unit(t1 - t0)
    xticks = nice_ticks(0.0, (t1 - t0) / scale, 5)
    t1 = max(t1, t0 + xticks[-1] * scale)
    peak = max((v for _, v in points), default=0.0)
    yticks = nice_ticks(0.0, peak if peak > 0 else 1.0, 4)
    ymax = yticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def py(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    parts: list[str] = [el("text", {"class_": "chart-title", "x": left, "y": 16.0}, title)]
    for tick in yticks:
        y = py(tick)
        parts.append(el("line", {"class_": "grid", "x1": left, "x2": left + plot_w, "y1": y, "y2": y}))
        parts.append(
            el(
                "text",
                {"class_": "tick", "x": left - 6, "y": y + 4, "text_anchor": "end"},
                _value(tick, money),
            )
        )
    for tick in xticks:
        x = px(t0 + tick * scale)
        parts.append(el("line", {"class_": "grid", "x1": x, "x2": x, "y1": top, "y2": top + plot_h}))
        parts.append(
            el(
                "text",
                {"class_": "tick", "x": x, "y": top + plot_h + 16, "text_anchor": "middle"},
                _label(tick, unit),
            )
        )
    parts.append(
        el(
            "line",
            {"class_": "axis", "x1": left, "x2": left + plot_w, "y1": top + plot_h, "y2": top + plot_h},
        )
    )
    parts.append(el("line", {"class_": "axis", "x1": left, "x2": left, "y1": top, "y2": top + plot_h}))
    parts.append(
        el(
            "text",
            {"class_": "axis-label", "x": left + plot_w / 2, "y": height - 4, "text_anchor": "middle"},
            "time since the run started",
        )
    )
    parts.append(
        el(
            "text",
            {
                "class_": "axis-label",
                "x": 14.0,
                "y": top + plot_h / 2,
                "text_anchor": "middle",
                "transform": f"rotate(-90 14 {_num(top + plot_h / 2)})",
            },
            y_label,
        )
    )
    path = [f"M{_num(px(t0))} {_num(py(0.0))}"]
    for t, v in sorted(points):
        path.append(f"H{_num(px(t))} V{_num(py(v))}")
    parts.append(el("path", {"class_": css, "d": " ".join(path)}))
    for t, v in points:
        parts.append(
            el(
                "circle",
                {"class_": css + "-dot", "cx": px(t), "cy": py(v), "r": 2.5},
                el("title", None, f"{(t - t0) / scale:.2f} {unit}: {_value(v, money)}"),
            )
        )
    return el("svg", _frame(width, height, "chart " + css), *parts)


def _frame(width: float, height: float, css: str) -> dict[str, object]:
    return {
        "xmlns": "http://www.w3.org/2000/svg",
        "class_": css,
        "width": width,
        "height": height,
        "viewBox": f"0 0 {_num(width)} {_num(height)}",
        "role": "img",
    }


def _label(value: float, unit: str) -> str:
    return f"{value:g} {unit}"


def _value(value: float, money: bool) -> str:
    if money:
        return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4g}"
    return f"{value:,.0f}" if value >= 1000 or value == int(value) else f"{value:g}"


def _num(value: object) -> str:
    """A coordinate as short text: one decimal, no trailing ``.0``."""
    if isinstance(value, float):
        text = f"{value:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return str(value)
