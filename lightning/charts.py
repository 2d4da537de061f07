"""The revenue page's charts, drawn on the server as complete SVG documents.

Pure: figures in, SVG text out; no I/O, no clock, no dependency. The console shows each
through an ``<img>`` (relay/console_blocks.py), so a chart needs no script and runs none.
Every piece of text (plan names come from invoices, whatever a future plan is called) is
XML-escaped, and characters XML 1.0 cannot hold at all are dropped: an unparsable SVG
would show as a broken image, not as markup.

Bars are one ``<rect>`` each under one styled group, with coordinates rounded to 0.01 px:
365 days draw in about 25 KB. Days with nothing paid draw no bar.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from html import escape

DAY = 86400
WIDTH = 720
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 64, 40, 36, 40  # plot margins: tick labels left, dates below
PLAN_ROW = 28
PLAN_LABEL = 150  # width of the plan-name column
MAX_PLAN_ROWS = 12  # more plans than this are summed as "other plans"
MAX_LABEL = 24  # characters of a plan name shown
BAR_FILL = "#f7931a"
TEXT_FILL = "#333"
GRID = "#ddd"
FAMILY = 'font-family="system-ui, sans-serif"'
FONT = FAMILY + ' font-size="11"'
HEADING = FAMILY + ' font-size="13"'

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


def _document(title: str, desc: str, height: int, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}"'
        f' role="img" aria-labelledby="chart-title chart-desc">'
        f'<title id="chart-title">{text(title)}</title><desc id="chart-desc">{text(desc)}</desc>'
        f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>'
        f'<text x="{LEFT}" y="22" {HEADING} font-weight="600" fill="{TEXT_FILL}">{text(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def daily_bars(
    title: str, first_day: int, values: Sequence[float], unit: str = "sats", empty: str = "nothing in this period"
) -> str:
    """One bar per UTC day, ``values[i]`` for day number ``first_day + i`` (unix time //
    86400); a value axis with about four ticks and a handful of dates below."""
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
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    top, step = nice_axis(peak)
    body = [f'<g {FONT} fill="{TEXT_FILL}" stroke-width="1">']
    # Value axis: grid lines and labels at each step.
    for k in range(round(top / step) + 1):
        y = base - k * step / top * plot_h
        body.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.2f}" y2="{y:.2f}" stroke="{GRID}"/>')
        body.append(f'<text x="{LEFT - 6}" y="{y + 4:.2f}" text-anchor="end">{text(compact(k * step))}</text>')
    body.append(
        f'<text x="12" y="{TOP + plot_h / 2:.2f}" transform="rotate(-90 12 {TOP + plot_h / 2:.2f})"'
        f' text-anchor="middle">{text(unit)}</text>'
    )
    slot = plot_w / n if n else plot_w
    gap = min(2.0, slot * 0.2)
    # Dates: about six, the last day always named.
    if n:
        every = max(1, math.ceil(n / 6))
        marks = list(range(0, n, every))
        if n - 1 - marks[-1] >= every * 0.75:
            marks.append(n - 1)
        for i in marks:
            x = LEFT + (i + 0.5) * slot
            body.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{base}" y2="{base + 4}" stroke="{TEXT_FILL}"/>')
            body.append(f'<text x="{x:.2f}" y="{base + 17}" text-anchor="middle">{day_label(first_day + i)}</text>')
    body.append("</g>")
    body.append(f'<g class="bars" fill="{BAR_FILL}">')
    for i, value in enumerate(values):
        if value <= 0:
            continue
        h = value / top * plot_h
        body.append(
            f'<rect x="{LEFT + i * slot + gap / 2:.2f}" y="{base - h:.2f}" width="{slot - gap:.2f}" height="{h:.2f}"/>'
        )
    body.append("</g>")
    body.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" stroke="{TEXT_FILL}"/>')
    if peak <= 0:
        body.append(_nothing(TOP + plot_h / 2, empty))
    return _document(title, desc, HEIGHT, body)


def plan_bars(
    title: str, totals: Sequence[tuple[str, float]], unit: str = "sats", empty: str = "nothing in this period"
) -> str:
    """One horizontal bar per plan, largest first, each labelled with its figure and
    share; past ``MAX_PLAN_ROWS`` plans the smallest are summed as "other plans"."""
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
    bar_w = WIDTH - LEFT - PLAN_LABEL - RIGHT - 130  # room for the figure after the bar
    body = [f'<g {FONT} fill="{TEXT_FILL}">']
    for i, (name, value) in enumerate(rows):
        y = TOP + i * PLAN_ROW
        label = name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "\u2026"
        w = value / peak * bar_w
        share = value / total * 100
        body.append(f'<text x="{LEFT + PLAN_LABEL - 8}" y="{y + 17}" text-anchor="end">{text(label)}</text>')
        body.append(
            f'<text x="{LEFT + PLAN_LABEL + w + 6:.2f}" y="{y + 17}">'
            f"{text(whole(value))} {text(unit)} ({share:.0f}%)</text>"
        )
    body.append("</g>")
    body.append(f'<g class="bars" fill="{BAR_FILL}">')
    for i, (_, value) in enumerate(rows):
        body.append(
            f'<rect x="{LEFT + PLAN_LABEL}" y="{TOP + i * PLAN_ROW + 4}"'
            f' width="{value / peak * bar_w:.2f}" height="{PLAN_ROW - 8}"/>'
        )
    body.append("</g>")
    if not rows:
        body.append(_nothing(TOP + PLAN_ROW / 2 + 4, empty))
    return _document(title, desc, height, body)


def _nothing(y: float, line: str) -> str:
    return (
        f'<text x="{WIDTH / 2:.0f}" y="{y:.2f}" text-anchor="middle" {HEADING} fill="#777">'
        f"{text(line)}</text>"
    )
