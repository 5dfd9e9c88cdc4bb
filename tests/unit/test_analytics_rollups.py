"""The reports from daily rollups give exactly the raw reports' numbers (generated data),
with late and duplicate events landed after a compaction and rollups cut short."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from loadtests.bench_analytics import generate
from serve.routers.analytics import load
from streams import reports
from streams.warehouse import (
    EVENTS,
    ORDER_LINES,
    PAID_ORDERS,
    ROLLUP_SCHEMAS,
    ROLLUPS,
    SOURCES_FILE,
    Warehouse,
    build_rollups,
    frame,
)

FIRST = date(2026, 1, 1)
DAYS = 40  # January (a whole month: read from its month file) and 9 days of February
LAST = FIRST + timedelta(days=DAYS - 1)
RANGES = [
    (FIRST, LAST),
    (FIRST, date(2026, 1, 31)),
    (date(2026, 1, 20), date(2026, 2, 3)),
    (date(2026, 1, 6), date(2026, 1, 6)),
    (LAST, LAST + timedelta(days=3)),  # past the data: zero days
]


def _with_extras(events: pl.DataFrame) -> pl.DataFrame:
    """Add checkouts (order.created) and views without a visitor, which the generator lacks."""
    paid = events.filter(pl.col("type") == "order.confirmed")
    created = paid.head(500).with_columns(
        ("c" + pl.col("event_id")).alias("event_id"),
        pl.lit("order.created").alias("type"),
        (pl.col("occurred_at") - pl.duration(minutes=5)).alias("occurred_at"),
    )
    anonymous = (
        events.filter(pl.col("type") == "product.viewed")
        .head(50)
        .with_columns(("n" + pl.col("event_id")).alias("event_id"), pl.lit(None).alias("visitor"))
    )
    return pl.concat([events, created, anonymous])


def _answers(warehouse: Warehouse) -> list[tuple[str, date, date, dict, dict]]:
    out = []
    for name in reports.REPORTS:
        for start, end in RANGES:
            raw = reports.compute(name, load(warehouse, name, start, end), start, end, 25)
            out.append((name, start, end, raw, reports.run(warehouse, name, start, end, 25)))
    return out


@pytest.fixture(scope="module")
def generated() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    events, lines, paid = generate(3_000, DAYS, seed=11)
    return _with_extras(events), lines, paid


@pytest.fixture
def make_warehouse(tmp_path: Path) -> Callable[[str], Warehouse]:
    """A new, empty warehouse per name (here: a directory; the S3 module adds a bucket)."""
    return lambda name="wh": Warehouse(tmp_path / name)


def _has_rollups(warehouse: Warehouse, span: str) -> bool:
    return warehouse.store.read_text(f"{ROLLUPS}/{span}/{SOURCES_FILE}") is not None


def _land(warehouse: Warehouse, tables: dict[str, pl.DataFrame]) -> None:
    for table, df in tables.items():
        warehouse.land_frame(table, df)


def test_rollups_agree_with_raw_rows_through_late_and_duplicate_events(
    make_warehouse, generated: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
):
    events, lines, paid = generated
    warehouse = make_warehouse()
    # Most rows land and are compacted; then the rest arrive late (into old days),
    # with a redelivery of some already compacted, and stay loose until the next round.
    late_ids = events.filter(pl.col("event_id").str.ends_with("7"))["event_id"]
    early = {
        EVENTS: events.filter(~pl.col("event_id").is_in(late_ids.implode())),
        ORDER_LINES: lines.filter(~pl.col("event_id").is_in(late_ids.implode())),
        PAID_ORDERS: paid.filter(~pl.col("event_id").is_in(late_ids.implode())),
    }
    late = {
        EVENTS: events.filter(pl.col("event_id").is_in(late_ids.implode())),
        ORDER_LINES: lines.filter(pl.col("event_id").is_in(late_ids.implode())),
        PAID_ORDERS: paid.filter(pl.col("event_id").is_in(late_ids.implode())),
    }
    _land(warehouse, early)
    warehouse.compact(min_files=1)
    _land(warehouse, late)
    _land(warehouse, {t: df.head(300) for t, df in early.items()})  # redelivered
    for name, start, end, raw, rolled in _answers(warehouse):
        assert rolled == raw, (name, start, end)
    # Compaction rebuilds the stale days' rollups; the answers do not move.
    before = _answers(warehouse)
    warehouse.compact()
    for span in ("day=2026-01-05", "month=2026-01", "month=2026-02"):
        assert _has_rollups(warehouse, span)
    assert _answers(warehouse) == before
    # Every paid order counted once, as the raw rows say.
    totals = reports.run(warehouse, "sales", FIRST, LAST)["totals"]
    assert totals["orders"] == paid.height
    assert totals["net"]["amount"] == paid["net"].sum()


def test_a_day_whose_rollups_were_cut_short_is_read_from_its_rows(
    make_warehouse, generated: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
):
    events, lines, paid = generated
    warehouse = make_warehouse()
    _land(warehouse, {EVENTS: events, ORDER_LINES: lines, PAID_ORDERS: paid})
    warehouse.compact(min_files=1)
    expected = _answers(warehouse)
    span = f"day={FIRST + timedelta(days=2)}"
    # A compaction killed before the rollups were done:
    warehouse.store.delete(f"{ROLLUPS}/{span}/{SOURCES_FILE}")
    warehouse.store.write(f"{ROLLUPS}/{span}/sales.parquet", b"garbage")
    assert _answers(warehouse) == expected
    assert warehouse.compact() == 0  # no day had two files ...
    assert _has_rollups(warehouse, span)  # ... but the missing rollups were rebuilt
    assert _answers(warehouse) == expected
    # A batch landed into a day after its month was rolled up: that month is read by day.
    january_views = events.filter(
        (pl.col("type") == "product.viewed") & (pl.col("occurred_at").dt.month() == 1)
    )
    late = january_views.head(5)
    warehouse.land_frame(EVENTS, late.with_columns(("late" + pl.col("event_id")).alias("event_id")))
    january = (FIRST, date(2026, 1, 31))
    (before,) = [a[3] for a in expected if a[0] == "funnel" and a[1:3] == january]
    views = reports.run(warehouse, "funnel", *january)["stages"][0]["events"]
    assert views == before["stages"][0]["events"] + 5
    for name, start, end, raw, rolled in _answers(warehouse):
        assert rolled == raw, (name, start, end)
    assert warehouse.compact() > 0
    assert _has_rollups(warehouse, "month=2026-01")


def test_rollups_of_an_empty_day_keep_their_schemas():
    empty = {t: frame(t, []) for t in (EVENTS, ORDER_LINES, PAID_ORDERS)}
    rollups = build_rollups(FIRST, empty[EVENTS], empty[ORDER_LINES], empty[PAID_ORDERS])
    for name, df in rollups.items():
        assert df.is_empty() and dict(df.schema) == ROLLUP_SCHEMAS[name]
    rolled = Warehouse(Path("/nonexistent/warehouse")).rollups(["stock", "funnel"])
    assert rolled["stock"].is_empty() and dict(rolled["funnel"].schema) == ROLLUP_SCHEMAS["funnel"]


def _stock(sku: str, at: datetime, available: int | None, event_id: str) -> dict:
    return {
        "event_id": event_id,
        "type": "inventory.changed",
        "occurred_at": at,
        "sku": sku,
        "available": available,
        "key": sku,
        "payload": "{}",
    }


def test_a_stockout_that_spans_days_is_one_stockout_with_all_its_hours(make_warehouse):
    warehouse = make_warehouse()
    day1 = datetime(2026, 3, 1, 20, tzinfo=UTC)
    rows = [
        _stock("A", day1, 0, "s1"),  # out at 20:00 on the 1st ...
        _stock("A", day1 + timedelta(hours=10), 0, "s2"),  # still out on the 2nd
        _stock("A", day1 + timedelta(hours=28), 3, "s3"),  # back at 00:00 on the 3rd
        _stock("A", day1 + timedelta(hours=40), None, "s4"),  # an unknown level: not out
        _stock("B", day1 + timedelta(hours=30), 0, "s5"),  # out from 02:00 on the 3rd to the end
    ]
    warehouse.land_frame(EVENTS, frame(EVENTS, rows))
    warehouse.compact(min_files=1)
    start, end = date(2026, 3, 1), date(2026, 3, 3)
    rolled = reports.run(warehouse, "stockouts", start, end)
    raw = reports.compute("stockouts", load(warehouse, "stockouts", start, end), start, end)
    assert rolled == raw
    assert [(s["sku"], s["stockouts"], s["hours_out"], s["out_now"]) for s in rolled["skus"]] == [
        ("A", 1, 28.0, False),
        ("B", 1, 22.0, True),
    ]


def test_sales_net_out_refunds_on_their_own_day_and_skip_failed_ones(
    make_warehouse, generated: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
):
    events, lines, paid = generated
    warehouse = make_warehouse()
    _land(warehouse, {EVENTS: events, ORDER_LINES: lines, PAID_ORDERS: paid})
    warehouse.compact(min_files=1)
    refunds = events.filter(pl.col("type") == "payment.refunded")
    paid_back = refunds.filter(~pl.col("payload").str.contains("failed"))
    assert 0 < paid_back.height < refunds.height  # the generator plants both kinds
    end = refunds["occurred_at"].max().date()  # type: ignore[union-attr]
    for report in (
        reports.run(warehouse, "sales", FIRST, end),
        reports.compute("sales", load(warehouse, "sales", FIRST, end), FIRST, end),
    ):
        totals = report["totals"]
        assert totals["refunds"]["amount"] == paid_back["amount"].sum()
        assert totals["refund_count"] == paid_back.height
        assert totals["net_after_refunds"]["amount"] == (
            totals["net"]["amount"] - paid_back["amount"].sum()
        )
        # Each day carries the refunds made that day, whatever day the sale was.
        day = paid_back["occurred_at"][0].date()
        that_day = paid_back.filter(pl.col("occurred_at").dt.date() == day)
        row = next(r for r in report["by_day"] if r["day"] == day.isoformat())
        assert row["refunds"]["amount"] == that_day["amount"].sum()
        assert all("refunds" not in r for r in report["by_category"])


def test_rollups_written_by_an_older_version_are_not_trusted(make_warehouse):
    day = date(2026, 3, 2)
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    warehouse = make_warehouse()
    refund = {
        "event_id": "r1",
        "type": "payment.refunded",
        "occurred_at": at,
        "order_id": "o1",
        "amount": 700,
        "payload": '{"status":"succeeded"}',
    }
    warehouse.land_frame(EVENTS, frame(EVENTS, [refund]))
    warehouse.compact(min_files=1)
    folder = f"{ROLLUPS}/day={day.isoformat()}"
    record = warehouse.store.read_text(f"{folder}/{SOURCES_FILE}")
    assert record is not None and '"rollups":' in record
    # A record as the first rollups wrote it (no version) over an empty refunds file.
    warehouse.store.write(
        f"{folder}/{SOURCES_FILE}",
        record.replace(',"rollups":2', "").replace('"rollups":2,', "").encode(),
    )
    warehouse.store.delete(f"{folder}/refunds.parquet")
    sales = reports.run(warehouse, "sales", day, day)
    assert sales["totals"]["refunds"]["amount"] == 700
