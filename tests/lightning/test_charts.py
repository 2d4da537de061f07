"""The revenue charts are well-formed SVG whose bars measure the figures, with every text
escaped, a readable empty case, and a year of days in a small document."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

from lightning.charts import MAX_PLAN_ROWS, NARROW, WIDTH, daily_bars, day_label, nice_axis, plan_bars

SVG = "{http://www.w3.org/2000/svg}"
DAY0 = 19_700  # 2023-12-09


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    (group,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bars"]
    return list(group.iter(f"{SVG}rect"))


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_daily_bars_are_proportional_in_day_order_and_skip_empty_days() -> None:
    values = [0, 5, 100, 2000, 0, 37]
    root = parse(daily_bars("Sats per day", DAY0, values))
    drawn = bars(root)
    assert len(drawn) == 4
    heights = [float(r.get("height", "")) for r in drawn]
    ratios = [h / v for h, v in zip(heights, [5, 100, 2000, 37], strict=True)]
    assert ratios == pytest.approx([ratios[0]] * 4, rel=1e-2)
    xs = [float(r.get("x", "")) for r in drawn]
    assert xs == sorted(xs)
    # Each bar stands on the same base line, in its own day's slot.
    bases = {round(float(r.get("y", "")) + float(r.get("height", "")), 1) for r in drawn}
    assert len(bases) == 1
    slot = xs[1] - xs[0]  # days 1 and 2 are neighbours; coordinates are rounded to 0.01
    assert xs[2] - xs[0] == pytest.approx(2 * slot, abs=0.05) and xs[3] - xs[0] == pytest.approx(4 * slot, abs=0.05)
    # The value axis reaches past the peak and is labelled; dates name the first and last day.
    labels = texts(root)
    assert "2k" in labels and "0" in labels
    assert "2023-12-09" in labels and "2023-12-14" in labels
    assert root.findtext(f"{SVG}title") == "Sats per day"
    desc = root.findtext(f"{SVG}desc") or ""
    assert "2,142 sats in all" in desc and "highest 2,000 sats on 2023-12-12" in desc


def test_daily_bars_with_nothing_paid_draw_no_bar_and_say_so() -> None:
    root = parse(daily_bars("Sats per day", DAY0, [0] * 30, empty="no payments in this period"))
    assert bars(root) == []
    assert "no payments in this period" in texts(root)
    assert "no payments" in (root.findtext(f"{SVG}desc") or "")
    assert bars(parse(daily_bars("Sats per day", DAY0, []))) == []


def test_a_year_of_days_stays_small_and_labels_a_handful_of_dates() -> None:
    svg = daily_bars("Sats per day", DAY0, [1000 + (i * 37) % 5000 for i in range(365)])
    root = parse(svg)
    assert len(bars(root)) == 365
    assert len(svg.encode()) < 40_000
    dates = [t for t in texts(root) if t.startswith("20")]
    assert 5 <= len(dates) <= 8
    assert dates[0] == "2023-12-09" and dates[-1] == "2024-12-07"


def test_text_is_escaped_and_characters_xml_cannot_hold_are_dropped() -> None:
    evil = "<script>alert('x')</script> & \"q\" \x01\x1f"
    for svg in (
        daily_bars(evil, DAY0, [1, 2], unit=evil, empty=evil),
        plan_bars(evil, [(evil, 10), ("credit", 5)], unit=evil),
        plan_bars(evil, [], empty=evil),
    ):
        root = parse(svg)  # would raise on a bare < or &, or on \x01
        assert not list(root.iter(f"{SVG}script")) and not list(root.iter("script"))
        assert root.findtext(f"{SVG}title") == "<script>alert('x')</script> & \"q\" "
        assert "<script>" not in svg


def test_plan_bars_largest_first_proportional_with_shares() -> None:
    root = parse(plan_bars("Sats per plan", [("credit", 30_000), ("subscription", 120_000), ("zap", 0)]))
    drawn = bars(root)
    assert len(drawn) == 2  # nothing paid for "zap": no row
    widths = [float(r.get("width", "")) for r in drawn]
    assert widths[0] / widths[1] == pytest.approx(4, rel=1e-3)
    labels = texts(root)
    assert labels.index("subscription") < labels.index("credit")
    assert "120,000 sats (80%)" in labels and "30,000 sats (20%)" in labels
    long_name = "x" * 100
    assert "x" * 23 + "\u2026" in texts(parse(plan_bars("t", [(long_name, 1)])))


def test_many_plans_fold_the_smallest_into_other_plans() -> None:
    totals = [(f"plan{i:02d}", 100 - i) for i in range(20)]
    root = parse(plan_bars("Sats per plan", totals))
    assert len(bars(root)) == MAX_PLAN_ROWS
    labels = texts(root)
    assert "other plans" in labels
    folded = sum(100 - i for i in range(MAX_PLAN_ROWS - 1, 20))
    assert f"{folded} sats ({folded / sum(v for _, v in totals) * 100:.0f}%)" in labels


def test_plan_bars_with_nothing_paid() -> None:
    root = parse(plan_bars("Sats per plan", [("credit", 0)], empty="no payments in this period"))
    assert bars(root) == []
    assert "no payments in this period" in texts(root)


@pytest.mark.parametrize(
    ("peak", "axis"),
    [(0, (1, 1)), (3, (3, 1)), (7, (8, 2)), (2000, (2000, 500)), (2001, (3000, 1000)), (123_456, (150_000, 50_000))],
)
def test_value_axis_steps_are_round(peak: float, axis: tuple[float, float]) -> None:
    assert nice_axis(peak) == axis


@pytest.mark.parametrize("width", [WIDTH, NARROW])
@pytest.mark.parametrize("days", [7, 30, 365])
def test_each_width_names_first_and_last_day_without_overlapping_dates(width: int, days: int) -> None:
    """The phone drawing (NARROW) as well as the desk one: first and last day named, dates
    far enough apart never to overlap, everything inside the drawing, the plan chart too."""
    root = parse(daily_bars("Sats per day", DAY0, [float(i % 5) for i in range(days)], width=width))
    assert root.get("width") == str(width)
    dates = [t for t in root.iter(f"{SVG}text") if (t.text or "").startswith("20")]
    assert dates[0].text == "2023-12-09" and dates[-1].text == day_label(DAY0 + days - 1)
    xs = [float(t.get("x", "")) for t in dates]
    # A date is ~62 units wide; the last one is anchored at its end: 93 apart never overlap.
    assert all(b - a >= 93 for a, b in itertools.pairwise(xs)), xs
    assert all(0 <= x <= width for x in xs)
    plans = parse(plan_bars("Sats per plan", [("subscription", 500), ("a-very-long-plan-name", 42)], width=width))
    assert plans.get("width") == str(width)
    for rect in plans.iter(f"{SVG}rect"):
        assert float(rect.get("x", "0")) + float(rect.get("width", "0")) <= width
