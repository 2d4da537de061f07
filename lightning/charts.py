"""The revenue page's charts, drawn on the server as complete SVG documents.

Pure: figures in, SVG text out; no I/O, no clock, no dependency. The console shows each
through an ``<img>`` (relay/ops/console_blocks.py), so a chart needs no script and runs none.
Every piece of text (plan names come from invoices, whatever a future plan is called) is
XML-escaped, and characters XML 1.0 cannot hold at all are dropped: an unparsable SVG
would show as a broken image, not as markup.

Bars are one ``<rect>`` each under one styled group, with coordinates rounded to 0.01 px:
365 days draw in about 25 KB. Days with nothing paid draw no bar.

Each chart is drawn at a width: ``WIDTH`` for a desk, ``NARROW`` for a phone (the console
shows the narrow one below 640 px). One 720-unit drawing squeezed onto a 366 px phone
column showed its 11-unit labels at 5.6 px; the narrow drawing keeps them at about their
size, with fewer dates and a narrower plan-name column.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

DAY = 86400
WIDTH = 720
NARROW = 360  # a phone's console column (390 px less the page's padding)
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 64, 40, 36, 40  # plot margins: tick labels left, dates below
PLAN_ROW = 28
PLAN_LABEL = 150  # width of the plan-name column
MAX_PLAN_ROWS = 12  # more plans than this are summed as "other plans"
MAX_LABEL = 24  # characters of a plan name shown
DATE_SPACING = 95  # units between two date labels' anchors so that they never overlap
BAR_FILL = "#f7931a"
TEXT_FILL = "#333"
GRID = "#ddd"
FAMILY = 'font-family="system-ui, sans-serif"'
FONT = FAMILY + ' font-size="11"'
HEADING = FAMILY + ' font-size="13"'


@dataclass(frozen=True, slots=True)
class _Frame:
    """Margins and label room of a chart drawn ``width`` units wide."""

    width: int
    left: int  # the value axis' labels
    right: int
    plan_label: int  # the plan-name column of plan_bars
    figure_room: int  # after a plan's bar: its figure and share
    label_chars: int  # of a plan name
    dates: int  # about this many dates under daily_bars


def _frame(width: int) -> _Frame:
    if width >= WIDTH:
        return _Frame(width, LEFT, RIGHT, PLAN_LABEL, 130, MAX_LABEL, 6)
    return _Frame(width, 44, 12, 96, 112, 13, 3)

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def text(value: str) -> str:
    """``value`` as XML character data or attribute text."""
    return escape(_NOT_XML.sub("", value), quote=True)


def compact(value: float) -> str:
    """An axis figure: 950, 12k, 1.5M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.0f}"


def whole(value: float) -> str:
    """A figure spelled out: 12,345."""
    return f"{round(value):,}"


def nice_axis(peak: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step): an axis from 0 to ``top`` in steps of 1, 2 or 5 x 10^n (at least 1, the
    figures being sats) that holds ``peak`` in about ``ticks`` steps."""
    if peak <= 0:
        return 1.0, 1.0
    raw = peak / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1.0)
    return step * math.ceil(peak / step), step


def day_label(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def _document(title: str, desc: str, frame: _Frame, height: int, body: list[str]) -> str:
    width = frame.width
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img" aria-labelledby="chart-title chart-desc">'
        f'<title id="chart-title">{text(title)}</title><desc id="chart-desc">{text(desc)}</desc>'
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
        f'<text x="{frame.left}" y="22" {HEADING} font-weight="600" fill="{TEXT_FILL}">{text(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def daily_bars(
    title: str,
    first_day: int,
    values: Sequence[float],
    unit: str = "sats",
    empty: str = "nothing in this period",
    *,
    width: int = WIDTH,
) -> str:
    """One bar per UTC day, ``values[i]`` for day number ``first_day + i`` (unix time //
    86400); a value axis with about four ticks and a handful of dates below, ``width``
    units wide (``WIDTH`` or ``NARROW``)."""
    frame = _frame(width)
    n = len(values)
    total = sum(values)
    peak = max(values, default=0)
    if n and peak > 0:
        best = values.index(peak)
        desc = (
            f"{n} days from {day_label(first_day)} to {day_label(first_day + n - 1)}: {whole(total)} {unit} in all;"
            f" highest {whole(peak)} {unit} on {day_label(first_day + best)}"
        )
    else:
        desc = f"{n} days from {day_label(first_day)}: {empty}"
    left, right = frame.left, frame.right
    plot_w = width - left - right
    plot_h = HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    top, step = nice_axis(peak)
    body = [f'<g {FONT} fill="{TEXT_FILL}" stroke-width="1">']
    # Value axis: grid lines and labels at each step.
    for k in range(round(top / step) + 1):
        y = base - k * step / top * plot_h
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.2f}" y2="{y:.2f}" stroke="{GRID}"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{text(compact(k * step))}</text>')
    body.append(
        f'<text x="12" y="{TOP + plot_h / 2:.2f}" transform="rotate(-90 12 {TOP + plot_h / 2:.2f})"'
        f' text-anchor="middle">{text(unit)}</text>'
    )
    slot = plot_w / n if n else plot_w
    gap = min(2.0, slot * 0.2)
    # Dates: a few (six on a desk, three on a phone), the last day always named.
    if n:
        every = max(1, math.ceil(n / frame.dates))
        marks = list(range(0, n, every))
        if marks[-1] != n - 1:
            # The last day is named: beside the last mark when there is room for both labels
            # (a date is ~62 units at this size; the last one ends at the edge), else instead of it.
            if (n - 1 - marks[-1]) * slot >= DATE_SPACING or len(marks) == 1:
                marks.append(n - 1)
            else:
                marks[-1] = n - 1
        for i in marks:
            x = left + (i + 0.5) * slot
            body.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{base}" y2="{base + 4}" stroke="{TEXT_FILL}"/>')
            # The first and last labels keep inside the drawing (a 360-unit chart has no margin to spare).
            anchor = "start" if x - 32 < 0 else "end" if x + 32 > width else "middle"
            body.append(f'<text x="{x:.2f}" y="{base + 17}" text-anchor="{anchor}">{day_label(first_day + i)}</text>')
    body.append("</g>")
    body.append(f'<g class="bars" fill="{BAR_FILL}">')
    for i, value in enumerate(values):
        if value <= 0:
            continue
        h = value / top * plot_h
        body.append(
            f'<rect x="{left + i * slot + gap / 2:.2f}" y="{base - h:.2f}" width="{slot - gap:.2f}" height="{h:.2f}"/>'
        )
    body.append("</g>")
    body.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="{TEXT_FILL}"/>')
    if peak <= 0:
        body.append(_nothing(width, TOP + plot_h / 2, empty))
    return _document(title, desc, frame, HEIGHT, body)


def plan_bars(
    title: str,
    totals: Sequence[tuple[str, float]],
    unit: str = "sats",
    empty: str = "nothing in this period",
    *,
    width: int = WIDTH,
) -> str:
    """One horizontal bar per plan, largest first, each labelled with its figure and
    share; past ``MAX_PLAN_ROWS`` plans the smallest are summed as "other plans"."""
    frame = _frame(width)
    rows = sorted(((name, v) for name, v in totals if v > 0), key=lambda r: (-r[1], r[0]))
    if len(rows) > MAX_PLAN_ROWS:
        rest = sum(v for _, v in rows[MAX_PLAN_ROWS - 1 :])
        rows = [*rows[: MAX_PLAN_ROWS - 1], ("other plans", rest)]
    total = sum(v for _, v in rows)
    height = TOP + max(len(rows), 1) * PLAN_ROW + 12
    if rows:
        desc = f"{whole(total)} {unit} in all: " + "; ".join(f"{name} {whole(v)} {unit}" for name, v in rows)
    else:
        desc = empty
    peak = rows[0][1] if rows else 0.0
    # The plan-name column starts at the left edge: plan_bars has no value axis.
    names_at = frame.left if width >= WIDTH else frame.right
    bars_at = names_at + frame.plan_label
    bar_w = width - bars_at - frame.right - frame.figure_room  # room for the figure after the bar
    chars = frame.label_chars
    body = [f'<g {FONT} fill="{TEXT_FILL}">']
    for i, (name, value) in enumerate(rows):
        y = TOP + i * PLAN_ROW
        label = name if len(name) <= chars else name[: chars - 1] + "\u2026"
        w = value / peak * bar_w
        share = value / total * 100
        body.append(f'<text x="{bars_at - 8}" y="{y + 17}" text-anchor="end">{text(label)}</text>')
        body.append(
            f'<text x="{bars_at + w + 6:.2f}" y="{y + 17}">'
            f"{text(whole(value))} {text(unit)} ({share:.0f}%)</text>"
        )
    body.append("</g>")
    body.append(f'<g class="bars" fill="{BAR_FILL}">')
    for i, (_, value) in enumerate(rows):
        body.append(
            f'<rect x="{bars_at}" y="{TOP + i * PLAN_ROW + 4}"'
            f' width="{value / peak * bar_w:.2f}" height="{PLAN_ROW - 8}"/>'
        )
    body.append("</g>")
    if not rows:
        body.append(_nothing(width, TOP + PLAN_ROW / 2 + 4, empty))
    return _document(title, desc, frame, height, body)


def _nothing(width: int, y: float, line: str) -> str:
    return (
        f'<text x="{width / 2:.0f}" y="{y:.2f}" text-anchor="middle" {HEADING} fill="#777">'
        f"{text(line)}</text>"
    )
