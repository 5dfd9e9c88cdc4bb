"""Analytics reports over generated orders: how long each report takes (no services).

Generates ``--orders`` paid orders (1 to 4 lines each, 20,000 customers with
skewed activity, 5,000 SKUs in 12 categories, spread over ``--days`` days),
with about three product views and one cart add per order and a stock change
per line, as warehouse frames written into a temporary warehouse (one file per
table and day, as after compaction, with each day's rollups). Then times each
report the way the route runs it (``reports.run``: read the range's daily
rollups, combine, and for ``--charts`` also render a PNG): median and worst of
``--repeat`` runs, for the last 30 days and for the whole range. A plain read
of the same files is timed in the same run as the baseline. ``--raw`` also
times the reports over raw rows (``load`` + ``compute``, the path before the
rollups) and checks that both give the same answer.

    .venv/bin/python -m loadtests.bench_analytics --orders 1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from serve.routers.analytics import load
from streams import charts, reports
from streams.warehouse import (
    EVENT_SCHEMA,
    EVENTS,
    LINE_SCHEMA,
    ORDER_LINES,
    PAID_ORDER_SCHEMA,
    PAID_ORDERS,
    Warehouse,
)

CATEGORIES = [f"cat-{i:02d}" for i in range(12)]


def generate(
    orders: int, days: int, seed: int = 7
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ms0 = int(start.timestamp() * 1000)
    order_ms = np.sort(rng.integers(0, days * 86_400_000, orders)) + ms0
    users = (rng.pareto(1.2, orders) * 500).astype(np.int64) % 20_000
    n_lines = rng.integers(1, 5, orders)
    line_order = np.repeat(np.arange(orders), n_lines)
    skus = (rng.pareto(1.0, line_order.size) * 50).astype(np.int64) % 5_000
    quantity = rng.integers(1, 4, line_order.size)
    unit = 500 + (skus * 37) % 20_000
    gross_line = unit * quantity
    net_line = gross_line - np.where(rng.random(line_order.size) < 0.2, gross_line // 10, 0)
    gross = np.bincount(line_order, gross_line, orders).astype(np.int64)
    discounts = gross - np.bincount(line_order, net_line, orders).astype(np.int64)
    order_ids = pl.Series([f"o{i}" for i in range(orders)])
    paid = pl.DataFrame(
        {
            "event_id": pl.Series([f"e{i:09d}" for i in range(orders)]),
            "type": "order.confirmed",
            "occurred_at": pl.Series(order_ms).cast(pl.Datetime("ms", "UTC")),
            "user_id": pl.Series(users).cast(pl.String),
            "order_id": order_ids,
            "amount": gross - discounts,
            "gross": gross,
            "discounts": discounts,
            "currency": "BRL",
        }
    )
    paid = paid.with_columns(("user:" + pl.col("user_id")).alias("visitor"))
    views_n, adds_n = orders * 3, orders
    view_ms = rng.integers(0, days * 86_400_000, views_n + adds_n) + ms0
    visitors = rng.integers(0, 60_000, views_n + adds_n)
    funnel = pl.DataFrame(
        {
            "event_id": pl.Series([f"v{i:010d}" for i in range(views_n + adds_n)]),
            "type": ["product.viewed"] * views_n + ["cart.item_added"] * adds_n,
            "occurred_at": pl.Series(view_ms).cast(pl.Datetime("ms", "UTC")),
            "visitor": pl.Series(visitors).cast(pl.String),
            "sku": pl.Series(rng.integers(0, 5_000, views_n + adds_n)).cast(pl.String),
        }
    )
    stock = pl.DataFrame(
        {
            "event_id": pl.Series([f"s{i:010d}" for i in range(line_order.size)]),
            "type": "inventory.changed",
            "occurred_at": pl.Series(order_ms[line_order] + 1).cast(pl.Datetime("ms", "UTC")),
            "sku": pl.Series(skus).cast(pl.String),
            "available": pl.Series(rng.integers(0, 8, line_order.size)),
        }
    )
    # 3% of orders refunded (cancelled after payment, or by an operator) 1-72 h later,
    # one refund in ten failed at the PSP (it pays nothing back).
    refunded = np.sort(rng.choice(orders, orders * 3 // 100, replace=False))
    failed = rng.random(refunded.size) < 0.1
    refunds = pl.DataFrame(
        {
            "event_id": pl.Series([f"r{i:09d}" for i in refunded]),
            "type": "payment.refunded",
            "occurred_at": pl.Series(
                order_ms[refunded] + rng.integers(3_600_000, 72 * 3_600_000, refunded.size)
            ).cast(pl.Datetime("ms", "UTC")),
            "order_id": order_ids.gather(refunded),
            "amount": (gross - discounts)[refunded],
            "payload": pl.Series(
                ['{"status":"failed"}' if f else '{"status":"succeeded"}' for f in failed]
            ),
        }
    )
    events = pl.concat([paid, funnel, stock, refunds], how="diagonal").with_columns(
        pl.lit("k").alias("key"), pl.col("payload").fill_null("{}")
    )
    events = events.select(
        [
            pl.col(c).cast(t) if c in events.columns else pl.lit(None, t).alias(c)
            for c, t in EVENT_SCHEMA.items()
        ]
    )
    lines = pl.DataFrame(
        {
            "event_id": pl.Series([f"e{i:09d}" for i in line_order]),
            "line": pl.Series(np.concatenate([np.arange(k) for k in n_lines])).cast(pl.Int32),
            "occurred_at": pl.Series(order_ms[line_order]).cast(pl.Datetime("ms", "UTC")),
            "order_id": order_ids.gather(line_order),
            "user_id": pl.Series(users[line_order]).cast(pl.String),
            "sku": pl.Series(skus).cast(pl.String),
            "category": pl.Series([CATEGORIES[s % 12] for s in skus]),
            "quantity": quantity,
            "unit_price": unit,
            "gross": gross_line,
            "net": net_line,
        }
    ).select([pl.col(c).cast(t) for c, t in LINE_SCHEMA.items()])
    paid_orders = paid.select(
        "event_id",
        "occurred_at",
        "order_id",
        "user_id",
        "gross",
        "discounts",
        (pl.col("gross") - pl.col("discounts")).alias("net"),
        "currency",
    ).select([pl.col(c).cast(t) for c, t in PAID_ORDER_SCHEMA.items()])
    return events, lines, paid_orders


def _time(fn, repeat: int) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), max(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--charts", action="store_true")
    parser.add_argument("--raw", action="store_true", help="also time and check the raw path")
    args = parser.parse_args()
    started = time.perf_counter()
    events, lines, paid_orders = generate(args.orders, args.days)
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(Path(tmp))
        warehouse.land_frame(EVENTS, events)
        warehouse.land_frame(ORDER_LINES, lines)
        warehouse.land_frame(PAID_ORDERS, paid_orders)
        compacting = time.perf_counter()
        warehouse.compact(min_files=1)
        print(
            f"generated {args.orders:,} orders, {lines.height:,} lines, {events.height:,} events"
            f" over {args.days} days in {time.perf_counter() - started:.1f}s"
            f" (compaction and rollups of every day: {time.perf_counter() - compacting:.1f}s)"
        )
        end = date(2026, 1, 1) + timedelta(days=args.days - 1)
        files = sorted((Path(tmp) / EVENTS).rglob("*.parquet"))
        base, _ = _time(lambda: pl.read_parquet(files, columns=["event_id"]), args.repeat)
        print(f"baseline: read the event_id column of every events file: {base:.0f} ms")
        print(f"{'report':<14}{'range':>8}{'median ms':>11}{'worst ms':>10}{'x base':>8}")
        for name in reports.REPORTS:
            # 30 days (part of a month, days from their day rollups), the whole range, and
            # one not aligned with months (partial months at both ends).
            ranges = (
                ("30 d", end - timedelta(days=29), end),
                ("all", date(2026, 1, 1), end),
                ("mid", date(2026, 1, 15), end - timedelta(days=16)),
            )
            for label, first, last in ranges:

                def run(name: str = name, first: date = first, last: date = last) -> dict[str, Any]:
                    data = reports.run(warehouse, name, first, last)
                    if args.charts:
                        charts.render(data, "png")
                    return data

                def raw(name: str = name, first: date = first, last: date = last) -> dict[str, Any]:
                    return reports.compute(name, load(warehouse, name, first, last), first, last)

                median, worst = _time(run, args.repeat)
                line = f"{name:<14}{label:>8}{median:>11.0f}{worst:>10.0f}{median / base:>8.1f}"
                if args.raw:
                    raw_median, _ = _time(raw, 1)
                    same = "same" if raw() == run() else "DIFFERENT"
                    line += f"   raw {raw_median:>6.0f} ms ({raw_median / base:.1f} x base), {same}"
                print(line)


if __name__ == "__main__":
    main()
