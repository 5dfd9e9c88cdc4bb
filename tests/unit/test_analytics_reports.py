"""The report math on small hand-built event sets; every expected number worked by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from streams.charts import render
from streams.events import (
    CART_ITEM_ADDED,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    PRODUCT_VIEWED,
    Envelope,
    EventType,
    make_event,
)
from streams.reports import Frames, compute, report_name, rfm_scores
from streams.warehouse import EVENTS, ORDER_LINES, PAID_ORDERS, frame, normalise, rows_for

CATEGORIES = {"A": "books", "B": "toys", "C": "toys", "D": "garden"}


def _ms(day: str, hour: int = 12) -> int:
    when = datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _event(kind: EventType, key: str, payload: dict[str, Any], day: str, hour: int = 12):
    return make_event(kind, key, payload, _ms(day, hour))


def _paid(order_id: str, user: str, day: str, lines: list[tuple], discount: int = 0):
    """order.confirmed with its stored order: lines are (sku, quantity, unit, line_total)."""
    order = {
        "lines": [
            {"sku": s, "quantity": q, "unit_price": u, "line_total": t} for s, q, u, t in lines
        ],
        "totals": {"subtotal": sum(q * u for _, q, u, _ in lines), "discount_total": discount},
    }
    event = _event(
        ORDER_CONFIRMED, order_id, {"order_id": order_id, "user_id": user, "total": 0}, day
    )
    return event, order


def _frames(*items: Envelope | tuple[Envelope, dict[str, Any]]) -> Frames:
    rows: dict[str, list[dict[str, Any]]] = {EVENTS: [], ORDER_LINES: [], PAID_ORDERS: []}
    for item in items:
        envelope, order = item if isinstance(item, tuple) else (item, None)
        for table, table_rows in rows_for(envelope, order, CATEGORIES).items():
            rows[table] += table_rows
    # Deduplicated as ``Warehouse.scan`` hands them over.
    tables = {t: normalise(t, frame(t, r)) for t, r in rows.items()}
    return Frames(tables[EVENTS], tables[ORDER_LINES], tables[PAID_ORDERS])


def _sales_frames() -> Frames:
    o1 = _paid("o1", "u1", "2026-11-02", [("A", 2, 1000, 1800), ("B", 1, 500, 500)], 300)
    return _frames(
        _paid("o5", "u4", "2026-11-01", [("D", 1, 500, 500)]),
        o1,
        o1,  # delivered twice, landed once
        _paid("o2", "u2", "2026-11-02", [("A", 1, 1000, 1000)]),
        _paid("o3", "u1", "2026-11-04", [("C", 3, 300, 900)]),
        _paid("o4", "u3", "2026-10-30", [("A", 1, 1000, 1000)]),  # before the range
    )


def _amounts(row: dict[str, Any]) -> tuple:
    return tuple(
        row[k]["amount"] if isinstance(row[k], dict) else row[k]
        for k in ("gross", "discounts", "net", "orders", "aov")
    )


def test_sales_by_day_and_category():
    report = compute("sales", _sales_frames(), date(2026, 11, 1), date(2026, 11, 4))
    # o1: gross 2000 + 500, discounts 300 (200 promotion on A + 100 coupon), net 2200.
    assert [(r["day"], *_amounts(r)) for r in report["by_day"]] == [
        ("2026-11-01", 500, 0, 500, 1, 500),
        ("2026-11-02", 3500, 300, 3200, 2, 1600),
        ("2026-11-03", 0, 0, 0, 0, 0),
        ("2026-11-04", 900, 0, 900, 1, 900),
    ]
    # 4600 / 4 orders = 1150.
    assert _amounts(report["totals"]) == (4900, 300, 4600, 4, 1150)
    assert report["totals"]["net"]["currency"] == "BRL"
    # By category only the lines' own promotions count as discounts (A: 2000 -> 1800).
    assert [(r["category"], r["units"], *_amounts(r)) for r in report["by_category"]] == [
        ("books", 3, 3000, 200, 2800, 2, 1400),
        ("toys", 4, 1400, 0, 1400, 2, 700),
        ("garden", 1, 500, 0, 500, 1, 500),
    ]


def test_aov_rounds_half_up():
    frames = _frames(
        _paid("x1", "u1", "2026-11-01", [("A", 1, 1000, 1000)]),
        _paid("x2", "u2", "2026-11-01", [("A", 1, 1001, 1001)]),
        _paid("x3", "u3", "2026-11-01", [("A", 1, 1000, 1000)]),
    )
    # 3001 / 3 = 1000.33 -> 1000; one more minor unit of 2 orders: 2001 / 2 = 1000.5 -> 1001.
    assert (
        compute("sales", frames, date(2026, 11, 1), date(2026, 11, 1))["totals"]["aov"]["amount"]
        == 1000
    )
    two = _frames(
        _paid("y1", "u1", "2026-11-01", [("A", 1, 1000, 1000)]),
        _paid("y2", "u2", "2026-11-01", [("A", 1, 1001, 1001)]),
    )
    assert (
        compute("sales", two, date(2026, 11, 1), date(2026, 11, 1))["totals"]["aov"]["amount"]
        == 1001
    )


def test_top_products_by_revenue_then_units_then_sku():
    report = compute("top-products", _sales_frames(), date(2026, 11, 1), date(2026, 11, 4), 3)
    # A: 1800 + 1000; C: 900; B and D tie on 500 and 1 unit: B first by SKU.
    assert [
        (p["sku"], p["units"], p["orders"], p["revenue"]["amount"]) for p in report["products"]
    ] == [
        ("A", 3, 2, 2800),
        ("C", 3, 1, 900),
        ("B", 1, 1, 500),
    ]


def test_funnel_counts_distinct_visitors_per_stage():
    day = "2026-11-02"
    frames = _frames(
        _event(PRODUCT_VIEWED, "v1", {"sku": "A", "visitor": "v1"}, day),
        _event(PRODUCT_VIEWED, "v1", {"sku": "B", "visitor": "v1"}, day),
        _event(PRODUCT_VIEWED, "v2", {"sku": "A", "visitor": "v2"}, day),
        _event(PRODUCT_VIEWED, "v3", {"sku": "A", "visitor": "v3"}, day),
        _event(PRODUCT_VIEWED, "A", {"sku": "A", "visitor": None}, day),  # unattributed
        _event(PRODUCT_VIEWED, "user:u1", {"sku": "A", "visitor": "user:u1", "user_id": "u1"}, day),
        _event(CART_ITEM_ADDED, "v1", {"cart_id": "v1", "sku": "A", "quantity": 1}, day),
        _event(CART_ITEM_ADDED, "user:u1", {"cart_id": "user:u1", "sku": "A", "quantity": 1}, day),
        _event(CART_ITEM_ADDED, "user:u1", {"cart_id": "user:u1", "sku": "B", "quantity": 1}, day),
        _event(ORDER_CREATED, "o1", {"order_id": "o1", "user_id": "u1", "total": 10}, day),
        _event(ORDER_CREATED, "o2", {"order_id": "o2", "user_id": "u2", "total": 10}, day),
        _paid("o1", "u1", day, [("A", 1, 10, 10)]),
        # Outside the range: not counted.
        _event(PRODUCT_VIEWED, "v9", {"sku": "A", "visitor": "v9"}, "2026-11-05"),
    )
    stages = compute("funnel", frames, date(2026, 11, 1), date(2026, 11, 4))["stages"]
    assert [(s["stage"], s["events"], s["visitors"]) for s in stages] == [
        ("view", 6, 4),
        ("cart", 3, 2),
        ("checkout", 2, 2),
        ("paid", 1, 1),
    ]
    assert [s["from_previous"] for s in stages] == [None, 0.5, 1.0, 0.5]
    assert [s["from_first"] for s in stages] == [1.0, 0.5, 0.5, 0.25]


def test_funnel_of_an_empty_range_has_no_rates():
    stages = compute("funnel", _frames(), date(2026, 11, 1), date(2026, 11, 1))["stages"]
    assert all(s["visitors"] == 0 and s["from_first"] is None for s in stages)


def test_rfm_scores_and_segments():
    scored = rfm_scores(_sales_frames(), date(2026, 11, 1), date(2026, 11, 4))
    rows = {r["user_id"]: r for r in scored.iter_rows(named=True)}
    assert set(rows) == {"u1", "u2", "u4"}  # u3 bought before the range
    # Recency to 11-04: u1 0 days, u2 2, u4 3; scores ceil(5 * rank / 3), the most
    # recent ranked highest: u4 rank 1 -> 2, u2 rank 2 -> 4, u1 rank 3 -> 5.
    assert [(u, rows[u]["recency_days"], rows[u]["r"]) for u in ("u1", "u2", "u4")] == [
        ("u1", 0, 5),
        ("u2", 2, 4),
        ("u4", 3, 2),
    ]
    # Frequency: u2 and u4 tie on 1 order -> the lower rank (1) -> 2; u1 (2 orders) -> 5.
    assert [rows[u]["f"] for u in ("u1", "u2", "u4")] == [5, 2, 2]
    # Monetary: u4 500, u2 1000, u1 2200 + 900.
    assert [(rows[u]["monetary"], rows[u]["m"]) for u in ("u4", "u2", "u1")] == [
        (500, 2),
        (1000, 4),
        (3100, 5),
    ]
    assert [rows[u]["segment"] for u in ("u1", "u2", "u4")] == ["champions", "new", "hibernating"]
    report = compute("rfm", _sales_frames(), date(2026, 11, 1), date(2026, 11, 4))
    by = {s["segment"]: s for s in report["segments"]}
    assert report["customers"] == 3
    assert (by["champions"]["customers"], by["champions"]["monetary"]["amount"]) == (1, 3100)
    assert by["loyal"]["customers"] == 0 and by["loyal"]["avg_recency_days"] is None
    assert by["new"]["share"] == 0.3333


def test_monthly_cohorts_with_retention():
    frames = _frames(
        _paid("a1", "a", "2026-09-15", [("A", 1, 10, 10)]),  # cohort September: not asked
        _paid("a2", "a", "2026-10-05", [("A", 1, 10, 10)]),
        _paid("b1", "b", "2026-10-01", [("A", 1, 10, 10)]),
        _paid("b2", "b", "2026-11-05", [("A", 1, 10, 10)]),
        _paid("b3", "b", "2026-12-02", [("A", 1, 10, 10)]),
        _paid("c1", "c", "2026-10-20", [("A", 1, 10, 10)]),
        _paid("d1", "d", "2026-11-10", [("A", 1, 10, 10)]),
        _paid("d2", "d", "2026-11-20", [("A", 1, 10, 10)]),
        _paid("e1", "e", "2027-01-03", [("A", 1, 10, 10)]),  # after the range
    )
    report = compute("cohorts", frames, date(2026, 10, 1), date(2026, 12, 31))
    assert report["cohorts"] == [
        # b and c start in October; b buys again in November and December.
        {"cohort": "2026-10", "customers": 2, "active": [2, 1, 1], "retention": [1.0, 0.5, 0.5]},
        # d's second order is in its first month: month 1 (December) has nobody.
        {"cohort": "2026-11", "customers": 1, "active": [1, 0], "retention": [1.0, 0.0]},
    ]


def test_stockouts_count_falls_to_zero_and_hours_at_zero():
    def stock(sku: str, available: int, day: str, hour: int) -> Envelope:
        return _event(INVENTORY_CHANGED, sku, {"sku": sku, "available": available}, day, hour)

    frames = _frames(
        stock("X", 3, "2026-11-01", 0),
        stock("X", 0, "2026-11-01", 6),
        stock("X", 0, "2026-11-01", 9),  # still out: not a new stock-out
        stock("X", 5, "2026-11-01", 12),
        stock("X", 0, "2026-11-02", 0),
        stock("Y", 2, "2026-11-01", 1),
        stock("Z", 0, "2026-11-02", 12),
    )
    report = compute("stockouts", frames, date(2026, 11, 1), date(2026, 11, 2))
    # X: out 06:00-12:00 and from 11-02 00:00 to the range's end (11-03 00:00): 6 + 24 h.
    assert report["skus"] == [
        {
            "sku": "X",
            "stockouts": 2,
            "hours_out": 30.0,
            "first_out_at": "2026-11-01T06:00:00.000Z",
            "out_now": True,
        },
        {
            "sku": "Z",
            "stockouts": 1,
            "hours_out": 12.0,
            "first_out_at": "2026-11-02T12:00:00.000Z",
            "out_now": True,
        },
    ]


def test_report_names_and_aliases():
    assert report_name("stock-outs") == "stockouts"
    assert report_name("sales") == "sales"
    assert report_name("../etc/passwd") is None
    assert report_name("") is None


@pytest.mark.parametrize("name", ["sales", "funnel", "rfm", "cohorts", "top-products", "stockouts"])
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_every_chart_renders(name: str, fmt: str):
    frames = _sales_frames()
    data = compute(name, frames, date(2026, 11, 1), date(2026, 11, 4))
    body = render(data, fmt)
    if fmt == "png":
        assert body.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in body[:2000]


def test_empty_reports_render_too():
    for name in ("sales", "cohorts", "stockouts", "top-products"):
        data = compute(name, _frames(), date(2026, 11, 1), date(2026, 11, 1))
        assert render(data, "png").startswith(b"\x89PNG")


def test_unknown_chart_format_is_refused():
    data = compute("sales", _frames(), date(2026, 11, 1), date(2026, 11, 1))
    with pytest.raises(ValueError):
        render(data, "gif")
