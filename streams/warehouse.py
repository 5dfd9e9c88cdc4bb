"""The analytics warehouse: events as Parquet files, one directory per table and day.

Layout under the root (``var/warehouse`` by default, or an S3 prefix: the files
live in a ``streams.warehouse_store`` store, which also decides when a file is
visible: a rename locally, the day's manifest on S3)::

    events/day=2026-12-04/data.parquet          compacted: every event of that day
    events/day=2026-12-04/batch-<uuid7>.parquet  landed since the last compaction
    order_lines/day=2026-12-04/...               one row per line of a paid order
    paid_orders/day=2026-12-04/...               one row per paid order (its totals)

``rows_for`` turns one event (and, for ``order.confirmed``, the order's lines
and totals with each product's category) into rows; it is pure, so a replay
of the same events gives the same rows. ``Warehouse.land`` writes a batch as
new files (a reader never sees half a file, nor on S3 half a day's tables).
The day is the event's ``occurred_at`` day, so a late event lands in its own
(older) day. Nothing is ever updated in place: a duplicate (an event
redelivered, or replayed) is a second row with the same ``event_id``, dropped
by ``compact`` and by every ``scan``.

``compact`` rewrites a day's files as one ``data.parquet`` (on S3
``data-<sha256[:16]>.parquet``, its content's name): rows deduplicated
by key, sorted by ``(occurred_at, event_id[, line])``, written with fixed
options and no timestamp, so the same events always give the same bytes.

Rollups: per day, small aggregates the reports read instead of raw rows
(``rollups/day=2026-12-04/<name>.parquet``, see ``ROLLUP_SCHEMAS``), built
by ``build_rollups`` from that day's deduplicated rows only, so a report sums
or unions days. ``sources.json`` beside them names the table files (and their
sizes) they were built from; a day whose files differ (a batch landed since,
a compaction cut short) is rebuilt from its rows on read, and ``compact``
rebuilds it for good. So late and duplicate events never make a rollup wrong.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from streams.events import (
    CART_ITEM_ADDED,
    EVENT_TYPES,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    PAYMENT_REFUNDED,
    PRODUCT_VIEWED,
    Envelope,
)
from streams.warehouse_store import DATA_FILE as DATA_FILE
from streams.warehouse_store import Layout, Store, day_key, open_store
from streams.warehouse_url import local_path

EVENTS = "events"
ORDER_LINES = "order_lines"
PAID_ORDERS = "paid_orders"
ROLLUPS = "rollups"
SOURCES_FILE = "sources.json"

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "type": pl.String(),
    "occurred_at": pl.Datetime("ms", "UTC"),
    "key": pl.String(),
    # A shopper across events: "user:<id>", or the anonymous cart's id (views, cart adds).
    "visitor": pl.String(),
    "user_id": pl.String(),
    "order_id": pl.String(),
    "sku": pl.String(),
    "quantity": pl.Int64(),
    # Order events: the order total; cart adds: the unit price; payments: the amount.
    "amount": pl.Int64(),
    # order.confirmed: merchandise before discounts, and the discounts (minor units).
    "gross": pl.Int64(),
    "discounts": pl.Int64(),
    "currency": pl.String(),
    "available": pl.Int64(),  # inventory.changed: what could be sold after the change
    "payload": pl.String(),  # the whole payload, canonical JSON (sorted keys)
}
LINE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "line": pl.Int32(),
    "occurred_at": pl.Datetime("ms", "UTC"),
    "order_id": pl.String(),
    "user_id": pl.String(),
    "sku": pl.String(),
    "category": pl.String(),
    "quantity": pl.Int64(),
    "unit_price": pl.Int64(),
    "gross": pl.Int64(),  # unit price x quantity
    "net": pl.Int64(),  # the line total after its promotions
}
# One row per paid order (order.confirmed): what the order reports read, so they
# need not filter every event by type.
PAID_ORDER_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "occurred_at": pl.Datetime("ms", "UTC"),
    "order_id": pl.String(),
    "user_id": pl.String(),
    "gross": pl.Int64(),  # merchandise before discounts (the total when not known)
    "discounts": pl.Int64(),
    "net": pl.Int64(),  # gross - discounts
    "currency": pl.String(),
}


@dataclass(frozen=True)
class Table:
    name: str
    schema: Mapping[str, pl.DataType]
    key: tuple[str, ...]

    @property
    def order(self) -> list[str]:
        return ["occurred_at", *self.key]


TABLES = {
    EVENTS: Table(EVENTS, EVENT_SCHEMA, ("event_id",)),
    ORDER_LINES: Table(ORDER_LINES, LINE_SCHEMA, ("event_id", "line")),
    PAID_ORDERS: Table(PAID_ORDERS, PAID_ORDER_SCHEMA, ("event_id",)),
}
# Fixed write options: part of the byte-identical replay promise.
_WRITE = {"compression": "zstd", "compression_level": 3, "statistics": True}
_ROW_GROUP = 131_072
# Threads for independent requests to an object store (days, rollup files, records).
PARALLEL = 8

# The funnel's stages (view, cart, checkout, paid): the events its rollup keeps.
FUNNEL_TYPES = (PRODUCT_VIEWED.name, CART_ITEM_ADDED.name, ORDER_CREATED.name, ORDER_CONFIRMED.name)
_MS = pl.Datetime("ms", "UTC")
# Per day: what each report sums (or unions) over a range instead of raw rows.
ROLLUP_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    # Paid orders by currency: sums and the count.
    "sales": {
        "day": pl.Date(),
        "currency": pl.String(),
        "gross": pl.Int64(),
        "discounts": pl.Int64(),
        "net": pl.Int64(),
        "orders": pl.Int64(),
    },
    # Lines of paid orders by category (an order is in one day: distinct orders add up).
    "categories": {
        "day": pl.Date(),
        "category": pl.String(),
        "gross": pl.Int64(),
        "discounts": pl.Int64(),
        "net": pl.Int64(),
        "orders": pl.Int64(),
        "units": pl.Int64(),
    },
    "products": {
        "day": pl.Date(),
        "sku": pl.String(),
        "category": pl.String(),
        "units": pl.Int64(),
        "revenue": pl.Int64(),
        "orders": pl.Int64(),
    },
    # Paid orders by customer (RFM, cohorts).
    "customers": {
        "day": pl.Date(),
        "user_id": pl.String(),
        "orders": pl.Int64(),
        "net": pl.Int64(),
    },
    # Funnel events by type and visitor (null: events without one): distinct sets,
    # so a union over days counts each visitor once, exactly.
    "funnel": {
        "day": pl.Date(),
        "type": pl.String(),
        "visitor": pl.String(),
        "events": pl.Int64(),
    },
    # Refunds paid out that day (``payment.refunded``, not failed) by currency: the
    # refund's own day, which may be later than the sale's.
    "refunds": {
        "day": pl.Date(),
        "currency": pl.String(),
        "refunds": pl.Int64(),
        "refund_count": pl.Int64(),
    },
    # Stock changes by SKU: the day's ends, so days chain into intervals at zero.
    "stock": {
        "day": pl.Date(),
        "sku": pl.String(),
        "first_at": _MS,
        "first_available": pl.Int64(),
        "last_at": _MS,
        "last_available": pl.Int64(),
        "stockouts": pl.Int64(),  # falls to zero within the day (the first row: from > 0)
        "ms_inner": pl.Int64(),  # ms at zero between the day's changes (not after its last)
        "first_out": _MS,
    },
}
# Bump when a rollup's meaning or schema changes: every sources record names it, so
# rollups written before no longer match and are rebuilt (read from rows until then).
ROLLUP_VERSION = 2
# What the refund figures read of ``payment.refunded`` events (the status is in the payload).
REFUND_COLUMNS = ["event_id", "occurred_at", "order_id", "amount", "currency", "payload"]
# The columns of each table the rollups read.
ROLLUP_COLUMNS = {
    EVENTS: ["event_id", "type", "occurred_at", "visitor", "sku", "available"],
    ORDER_LINES: ["event_id", "order_id", "sku", "category", "quantity", "gross", "net"],
    PAID_ORDERS: ["event_id", "order_id", "user_id", "gross", "discounts", "net", "currency"],
}


def refunds_of(events: pl.DataFrame) -> pl.DataFrame:
    """The refunds paid out among ``payment.refunded`` rows (``REFUND_COLUMNS``): a
    failed refund returned nothing; a refund without an amount counts as zero."""
    status = pl.col("payload").str.json_path_match("$.status")
    return events.filter(status.is_null() | (status != "failed")).select(
        pl.col("occurred_at").dt.date().alias("day"),
        pl.col("currency").fill_null("BRL"),
        pl.col("amount").fill_null(0),
    )


def build_rollups(
    day: date,
    events: pl.DataFrame,
    lines: pl.DataFrame,
    paid: pl.DataFrame,
    refunds: pl.DataFrame | None = None,
) -> dict[str, pl.DataFrame]:
    """The rollups of one day from its deduplicated rows (pure; sorted, fixed schemas);
    ``refunds`` are the day's ``payment.refunded`` events (``REFUND_COLUMNS``)."""
    if refunds is None:
        refunds = pl.DataFrame(schema={c: EVENT_SCHEMA[c] for c in REFUND_COLUMNS})
    paid = paid.unique("order_id", keep="first", maintain_order=True)
    lines = lines.join(paid.select("event_id"), on="event_id", how="semi")
    out = {
        "sales": paid.group_by("currency").agg(
            pl.col("gross").sum(),
            pl.col("discounts").sum(),
            pl.col("net").sum(),
            pl.len().alias("orders"),
        ),
        "categories": lines.group_by("category").agg(
            pl.col("gross").sum(),
            (pl.col("gross") - pl.col("net")).sum().alias("discounts"),
            pl.col("net").sum(),
            pl.col("order_id").n_unique().alias("orders"),
            pl.col("quantity").sum().alias("units"),
        ),
        "products": lines.group_by("sku", maintain_order=True).agg(
            pl.col("category").first(),
            pl.col("quantity").sum().alias("units"),
            pl.col("net").sum().alias("revenue"),
            pl.col("order_id").n_unique().alias("orders"),
        ),
        "customers": paid.group_by("user_id").agg(pl.len().alias("orders"), pl.col("net").sum()),
        "funnel": events.filter(pl.col("type").is_in(FUNNEL_TYPES))
        .group_by("type", "visitor")
        .agg(pl.len().alias("events")),
        "refunds": refunds_of(refunds)
        .group_by("currency")
        .agg(pl.col("amount").sum().alias("refunds"), pl.len().alias("refund_count")),
        "stock": _stock_day(events),
    }
    result = {}
    for name, df in out.items():
        schema = ROLLUP_SCHEMAS[name]
        keys = [
            c for c in ("currency", "category", "sku", "user_id", "type", "visitor") if c in schema
        ]
        df = df.with_columns(pl.lit(day, pl.Date()).alias("day"))
        df = df.select([pl.col(c).cast(t) for c, t in schema.items()])
        result[name] = df.sort(keys, nulls_last=True)
    return result


def _stock_day(events: pl.DataFrame) -> pl.DataFrame:
    stock = (
        events.filter(pl.col("type") == INVENTORY_CHANGED.name)
        .sort("sku", "occurred_at", "event_id")
        .with_columns(
            pl.col("available").shift(1).over("sku").alias("before"),
            pl.col("occurred_at").shift(-1).over("sku").alias("next_at"),
        )
    )
    out = pl.col("available") <= 0
    return stock.group_by("sku").agg(
        pl.col("occurred_at").first().alias("first_at"),
        pl.col("available").first().alias("first_available"),
        pl.col("occurred_at").last().alias("last_at"),
        pl.col("available").last().alias("last_available"),
        (out & ~(pl.col("before").fill_null(1) <= 0)).sum().alias("stockouts"),
        ((pl.col("next_at") - pl.col("occurred_at")).dt.total_milliseconds() * out.cast(pl.Int64))
        .sum()
        .alias("ms_inner"),
        pl.col("occurred_at").filter(out).min().alias("first_out"),
    )


def occurred(envelope: Envelope) -> datetime:
    return datetime.fromisoformat(envelope.occurred_at.replace("Z", "+00:00")).astimezone(UTC)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def rows_for(
    envelope: Envelope,
    order: Mapping[str, Any] | None = None,
    categories: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The warehouse rows of one event; raises ValueError on an event it cannot read.

    ``order`` is the order's stored data (``lines``, ``totals``) for an
    ``order.confirmed``; ``categories`` maps its SKUs to their category.
    """
    declared = EVENT_TYPES.get(envelope.type)
    if declared is not None and envelope.version != declared.version:
        raise ValueError(f"{envelope.type} v{envelope.version} is not known")
    at = occurred(envelope)
    p = envelope.payload
    user_id = _str(p.get("user_id"))
    row: dict[str, Any] = {
        "event_id": envelope.id,
        "type": envelope.type,
        "occurred_at": at,
        "key": envelope.key,
        "visitor": _str(p.get("visitor")),
        "user_id": user_id,
        "order_id": _str(p.get("order_id")),
        "sku": _str(p.get("sku")),
        "quantity": _int(p.get("quantity")),
        "amount": _int(p.get("total", p.get("amount"))),
        "gross": None,
        "discounts": None,
        "currency": _str(p.get("currency")),
        "available": _int(p.get("available")),
        "payload": json.dumps(p, sort_keys=True, separators=(",", ":"), default=str),
    }
    if envelope.type == CART_ITEM_ADDED.name:
        row["visitor"] = _str(p.get("cart_id")) or envelope.key
        row["amount"] = _int(p.get("unit_price"))
    elif envelope.type == PRODUCT_VIEWED.name and not p.get("sku"):
        raise ValueError("product.viewed without a sku")
    elif envelope.type == INVENTORY_CHANGED.name and row["sku"] is None:
        row["sku"] = envelope.key
    elif user_id is not None:
        row["visitor"] = f"user:{user_id}"
    lines: list[dict[str, Any]] = []
    paid: list[dict[str, Any]] = []
    if envelope.type == ORDER_CONFIRMED.name:
        if not row["order_id"] or not user_id:
            raise ValueError("order.confirmed without order_id or user_id")
        totals = (order or {}).get("totals") or {}
        row["gross"] = _int(totals.get("subtotal"))
        row["discounts"] = _int(totals.get("discount_total"))
        row["currency"] = row["currency"] or _str(totals.get("currency"))
        gross = row["gross"] if row["gross"] is not None else (row["amount"] or 0)
        discounts = row["discounts"] or 0
        paid.append(
            {
                "event_id": envelope.id,
                "occurred_at": at,
                "order_id": row["order_id"],
                "user_id": user_id,
                "gross": gross,
                "discounts": discounts,
                "net": gross - discounts,
                "currency": row["currency"] or "BRL",
            }
        )
        for i, line in enumerate((order or {}).get("lines") or []):
            sku = str(line["sku"])
            quantity, unit = _int(line["quantity"]) or 0, _int(line["unit_price"]) or 0
            lines.append(
                {
                    "event_id": envelope.id,
                    "line": i,
                    "occurred_at": at,
                    "order_id": row["order_id"],
                    "user_id": user_id,
                    "sku": sku,
                    "category": (categories or {}).get(sku, "unknown"),
                    "quantity": quantity,
                    "unit_price": unit,
                    "gross": unit * quantity,
                    "net": _int(line.get("line_total", unit * quantity)),
                }
            )
    return {EVENTS: [row], ORDER_LINES: lines, PAID_ORDERS: paid}


def chain_stock(days: pl.DataFrame, until: datetime | None) -> pl.DataFrame:
    """Stock rollups of consecutive spans (days, months) of each SKU chained into one:
    a span starting at zero after one that ended at zero is no new stock-out, and a
    span ending at zero stays out until the SKU's next change, else until ``until``
    (None: the time after the last change is not counted, as within a day)."""
    days = days.sort("sku", "first_at").with_columns(
        pl.col("last_available").shift(1).over("sku").alias("before"),
        pl.col("first_at").shift(-1).over("sku").fill_null(pl.lit(until, _MS)).alias("until"),
    )
    carried = ((pl.col("first_available") <= 0) & (pl.col("before") <= 0)).fill_null(False)
    tail = (pl.col("until") - pl.col("last_at")).dt.total_milliseconds() * (
        pl.col("last_available") <= 0
    ).cast(pl.Int64)
    return days.group_by("sku").agg(
        pl.col("first_at").first(),
        pl.col("first_available").first(),
        pl.col("last_at").last(),
        pl.col("last_available").last(),
        (pl.col("stockouts") - carried.cast(pl.Int64)).sum().alias("stockouts"),
        (pl.col("ms_inner") + tail.fill_null(0)).sum().alias("ms_inner"),
        pl.col("first_out").min(),
    )


def merge_rollup(name: str, days: pl.DataFrame) -> pl.DataFrame:
    """Several days' rollup ``name`` as one (a month's file), same schema; ``day`` is
    then the span's first day (the last for ``customers``, which RFM reads as the
    last order). Sales and refunds stay by day (the report lists days)."""
    schema = ROLLUP_SCHEMAS[name]
    sums = [pl.col(c).sum() for c in ("gross", "discounts", "net", "orders", "units")]
    days = days.sort("day", maintain_order=True)
    if name in ("sales", "refunds"):
        merged = days
    elif name == "categories":
        merged = days.group_by("category").agg(pl.col("day").min(), *sums)
    elif name == "products":
        merged = days.group_by("sku").agg(
            pl.col("day").min(),
            pl.col("category").first(),
            pl.col("units").sum(),
            pl.col("revenue").sum(),
            pl.col("orders").sum(),
        )
    elif name == "customers":
        merged = days.group_by("user_id").agg(
            pl.col("day").max(), pl.col("orders").sum(), pl.col("net").sum()
        )
    elif name == "funnel":
        merged = days.group_by("type", "visitor").agg(pl.col("day").min(), pl.col("events").sum())
    else:
        merged = chain_stock(days, None).join(
            days.group_by("sku").agg(pl.col("day").min()), on="sku"
        )
    merged = merged.select([pl.col(c).cast(t) for c, t in schema.items()])
    keys = ("currency", "category", "sku", "user_id", "type", "visitor")
    return merged.sort(
        [c for c in ("day", *keys) if c in schema and (c != "day" or name in ("sales", "refunds"))],
        nulls_last=True,
    )


def funnel_year(days: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """A year of daily funnel rollups as ``funnel_events`` (day, type, events) and
    ``funnel_visitors`` (type, visitor, the sorted days it was seen): any range of
    the year then counts distinct visitors over ~100k rows, not millions, exactly."""
    counts = (
        days.group_by("day", "type").agg(pl.col("events").sum().cast(pl.Int64)).sort("day", "type")
    )
    sets = (
        days.filter(pl.col("visitor").is_not_null())
        .group_by("type", "visitor")
        .agg(pl.col("day").sort().alias("days"))
        .sort("type", "visitor")
    )
    return {"funnel_events": counts, "funnel_visitors": sets}


def frame(table: str, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows as a frame of ``table``'s schema (an empty frame keeps the schema)."""
    schema = TABLES[table].schema
    return pl.DataFrame(list(rows), schema=dict(schema), orient="row")


def _day_dir(table: str, day: date) -> str:
    return day_key(table, day)


def _month_dir(day: date) -> str:
    return f"{ROLLUPS}/month={day.isoformat()[:7]}"


def _year_dir(year: int) -> str:
    return f"{ROLLUPS}/year={year:04d}"


def _record(sources: Mapping[str, Any]) -> str:
    return json.dumps({**sources, "rollups": ROLLUP_VERSION}, sort_keys=True, separators=(",", ":"))


def encode(df: pl.DataFrame) -> bytes:
    """``df`` as Parquet bytes, with the fixed options of the byte-identical promise."""
    out = io.BytesIO()
    df.write_parquet(out, row_group_size=_ROW_GROUP, **_WRITE)  # type: ignore[arg-type]
    return out.getvalue()


def normalise(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Deduplicated by key (first seen wins) and in the table's canonical order."""
    spec = TABLES[table]
    df = df.select([pl.col(c).cast(t) for c, t in spec.schema.items()])
    return df.unique(subset=list(spec.key), keep="first", maintain_order=True).sort(spec.order)


def is_compacted(names: Sequence[str]) -> bool:
    """A day's files are one compacted file (``data.parquet``, ``data-<hash>.parquet`` on S3)."""
    return len(names) == 1 and names[0].startswith("data")


class Warehouse:
    """Parquet files in a store (``streams.warehouse_store``): land batches, compact days,
    scan date ranges. ``location``: a directory, ``file:///dir`` or ``s3://bucket/prefix?...``
    (or a store already open)."""

    def __init__(self, location: str | Path | Store) -> None:
        if isinstance(location, (str, Path)):
            self.store: Store = open_store(location)
        else:
            self.store = location
        # The directory, or the URL (it holds no secrets: credentials in one are refused).
        path = local_path(location) if isinstance(location, (str, Path)) else None
        self.root: Path | str = (
            path if path is not None else location if isinstance(location, str) else ""
        ) or self.store.describe()

    def describe(self) -> str:
        return self.store.describe()

    def layout(self, tables: Sequence[str] = tuple(TABLES)) -> Layout:
        """Every day and the files each of ``tables`` holds in it (one consistent read
        of the manifests on S3)."""
        return self.store.layout(tables)

    def days(self, table: str) -> list[date]:
        return sorted(self.layout([table]))

    def files(self, table: str, day: date) -> list[str]:
        """The names of the day's visible files of ``table``, sorted."""
        return self.layout([table]).get(day, {}).get(table, [])

    def read_day(self, table: str, day: date) -> pl.DataFrame:
        """Every row of the day's files as stored (duplicates kept): for checks."""
        names = self.files(table, day)
        if not names:
            return frame(table, [])
        return self.store.scan([f"{_day_dir(table, day)}/{n}" for n in names]).collect()

    def land(self, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
        """Write rows (by table) as one new file per table and day, a day's tables made
        visible together; the keys written."""
        return self.land_frames({table: frame(table, r) for table, r in rows.items()})

    def land_frame(self, table: str, df: pl.DataFrame) -> list[str]:
        """Write a frame of ``table``'s schema as one new file per day; the keys written."""
        return self.land_frames({table: df})

    def land_frames(self, frames: Mapping[str, pl.DataFrame]) -> list[str]:
        by_day: dict[date, dict[str, bytes]] = {}
        for table, df in frames.items():
            if df.is_empty():
                continue
            df = df.with_columns(pl.col("occurred_at").dt.date().alias("_day"))
            for (day,), part in df.partition_by("_day", as_dict=True).items():
                assert isinstance(day, date)
                by_day.setdefault(day, {})[table] = encode(normalise(table, part.drop("_day")))
        written = []
        for day in sorted(by_day):
            written += self.store.add(day, by_day[day])
        return written

    def compact(self, min_files: int = 2) -> int:
        """Rewrite each day with ``min_files`` or more files as one file; days rewritten.

        Files landed while a day is compacted are left for the next round;
        the compacted file replaces the ones it absorbed atomically (a rename
        locally, a manifest swap on S3) before they are deleted, so a reader
        at worst sees a row twice (and drops it by key), never loses one.
        """
        with self.store.lock():
            layout = self.layout()

            def compact_day(day: date) -> int:
                done = 0
                for table in TABLES:
                    names = layout[day].get(table)
                    if names is None or len(names) < min_files:
                        continue
                    keys = [f"{_day_dir(table, day)}/{n}" for n in names]
                    merged = normalise(table, self.store.scan(keys).collect())
                    # The day's rollups are stale from here until rebuilt below (a
                    # crash in between leaves no sources.json: rebuilt on read).
                    self._invalidate(day)
                    self.store.replace(table, day, names, encode(merged))
                    done += 1
                return done

            # Days are independent (each its own files and manifest): on S3 they are
            # compacted in parallel, since each request waits on the network.
            rewritten = sum(self._map(compact_day, list(layout)))
            self._refresh_rollups()
            self.store.sweep(self.layout())
        return rewritten

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items``: in order locally, by a few threads on an object store."""
        if self.store.local or len(items) < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(PARALLEL, len(items))) as pool:
            return list(pool.map(fn, items))

    # --- rollups ----------------------------------------------------------------------------

    def _all_days(self) -> list[date]:
        return sorted(self.layout())

    def _sources(self, day: date, layout: Layout | None = None) -> dict[str, list[str]]:
        """The day's table files (their names: a rewrite of a day first removes the
        records naming its files, and S3 names a compacted file by its content)."""
        held = (layout if layout is not None else self.layout()).get(day, {})
        return {table: list(held.get(table, [])) for table in TABLES}

    def _recorded(self, folder: str) -> str | None:
        return self.store.read_text(f"{folder}/{SOURCES_FILE}")

    def _invalidate(self, day: date) -> None:
        """Forget what the day's (and its month's and year's) rollups were built from."""
        for folder in (_day_dir(ROLLUPS, day), _month_dir(day), _year_dir(day.year)):
            self.store.delete(f"{folder}/{SOURCES_FILE}")

    def _day_rollups(self, day: date, layout: Layout | None = None) -> dict[str, pl.DataFrame]:
        """The day's rollups computed from its rows (what ``compact`` writes)."""
        held = layout if layout is not None else self.layout()
        rows = {t: self.scan(t, day, day, columns=ROLLUP_COLUMNS[t], layout=held) for t in TABLES}
        refunds = self.scan(
            EVENTS, day, day, types=[PAYMENT_REFUNDED.name], columns=REFUND_COLUMNS, layout=held
        )
        return build_rollups(day, rows[EVENTS], rows[ORDER_LINES], rows[PAID_ORDERS], refunds)

    def _days_rollups(
        self, days: Sequence[date], layout: Layout
    ) -> dict[date, dict[str, pl.DataFrame]]:
        """Several days' rollups from their rows, with one scan per table for all of
        them (on an object store, a scan per day and table costs requests each)."""
        if len(days) < 2:
            return {day: self._day_rollups(day, layout) for day in days}
        held = {day: layout[day] for day in days if day in layout}

        def by_day(df: pl.DataFrame, columns: list[str]) -> dict[date, pl.DataFrame]:
            df = df.with_columns(pl.col("occurred_at").dt.date().alias("_day"))
            return {
                key[0]: part.select(columns)  # type: ignore[misc]
                for key, part in df.partition_by("_day", as_dict=True).items()
            }

        rows: dict[str, dict[date, pl.DataFrame]] = {}
        for table in TABLES:
            columns = ROLLUP_COLUMNS[table]
            wanted = columns if "occurred_at" in columns else [*columns, "occurred_at"]
            rows[table] = by_day(self.scan(table, columns=wanted, layout=held), columns)
        refunds = by_day(
            self.scan(EVENTS, types=[PAYMENT_REFUNDED.name], columns=REFUND_COLUMNS, layout=held),
            REFUND_COLUMNS,
        )

        def rows_of(table: str, day: date) -> pl.DataFrame:
            return rows[table].get(day, frame(table, []).select(ROLLUP_COLUMNS[table]))

        return {
            day: build_rollups(
                day,
                rows_of(EVENTS, day),
                rows_of(ORDER_LINES, day),
                rows_of(PAID_ORDERS, day),
                refunds.get(day, frame(EVENTS, []).select(REFUND_COLUMNS)),
            )
            for day in days
        }

    def _write_rollups(self, folder: str, rollups: Mapping[str, pl.DataFrame], record: str) -> None:
        self.store.delete(f"{folder}/{SOURCES_FILE}")
        self._map(
            lambda item: self.store.write(f"{folder}/{item[0]}.parquet", encode(item[1])),
            list(rollups.items()),
        )
        # Written last: the rollups count only once all of them are in place.
        self.store.write(f"{folder}/{SOURCES_FILE}", record.encode())

    def _refresh_rollups(self) -> None:
        """Rebuild every day's and month's rollups that no longer match their files."""
        layout = self.layout()
        months: dict[date, dict[str, Any]] = {}

        def refresh_day(day: date) -> None:
            record = _record(self._sources(day, layout))
            folder = _day_dir(ROLLUPS, day)
            if self._recorded(folder) != record:
                self._write_rollups(folder, self._day_rollups(day, layout), record)

        self._map(refresh_day, list(layout))
        for day in layout:
            months.setdefault(day.replace(day=1), {})[day.isoformat()] = self._sources(day, layout)
        for month, days in months.items():
            folder = _month_dir(month)
            record = _record(days)
            if self._recorded(folder) != record:
                day_dirs = [_day_dir(ROLLUPS, date.fromisoformat(d)) for d in days]
                merged = {
                    name: merge_rollup(
                        name, self.store.read([f"{f}/{name}.parquet" for f in day_dirs])
                    )
                    for name in ROLLUP_SCHEMAS
                }
                self._write_rollups(folder, merged, record)
        years: dict[int, dict[str, Any]] = {}
        for month, days in months.items():
            years.setdefault(month.year, {}).update(days)
        for year, days in years.items():
            folder = _year_dir(year)
            record = _record(days)
            if self._recorded(folder) != record:
                day_dirs = [_day_dir(ROLLUPS, date.fromisoformat(d)) for d in days]
                funnel = self.store.read([f"{f}/funnel.parquet" for f in day_dirs])
                self._write_rollups(folder, funnel_year(funnel), record)

    def funnel_sets(self, start: date, end: date) -> dict[str, pl.DataFrame]:
        """The funnel over ``[start, end]``: ``events`` (type, events; a row per day or
        year part) and ``visitors`` (type, visitor; a visitor may repeat, the caller
        counts distinct). A year's file answers for its days still as it recorded them;
        any other day comes from its own rollups (or rows)."""
        events: list[pl.DataFrame] = []
        visitors: list[pl.DataFrame] = []
        years: dict[int, list[date]] = {}
        layout = self.layout()
        for day in layout:
            if start <= day <= end:
                years.setdefault(day.year, []).append(day)
        for year, days in years.items():
            folder = _year_dir(year)
            recorded = json.loads(self._recorded(folder) or "{}")
            good = [
                d
                for d in days
                if recorded.get("rollups") == ROLLUP_VERSION
                and recorded.get(d.isoformat()) == self._sources(d, layout)
            ]
            if good:
                counts = self.store.read([f"{folder}/funnel_events.parquet"])
                events.append(counts.filter(pl.col("day").is_in(good)).select("type", "events"))
                sets = self.store.read([f"{folder}/funnel_visitors.parquet"])
                seen = pl.col("days").list.eval(pl.element().is_in(good)).list.any()
                visitors.append(sets.filter(seen).select("type", "visitor"))
            for day in sorted(set(days) - set(good)):
                part = self.rollups(["funnel"], day, day)["funnel"]
                events.append(part.select("type", "events"))
                visitors.append(
                    part.filter(pl.col("visitor").is_not_null()).select("type", "visitor")
                )
        return {
            "events": pl.concat(events)
            if events
            else pl.DataFrame(schema={"type": pl.String(), "events": pl.Int64()}),
            "visitors": pl.concat(visitors)
            if visitors
            else pl.DataFrame(schema={"type": pl.String(), "visitor": pl.String()}),
        }

    def rollups(
        self, names: Sequence[str], start: date | None = None, end: date | None = None
    ) -> dict[str, pl.DataFrame]:
        """Rollups ``names`` of the days in ``[start, end]`` (open ends), concatenated:
        a whole month from its month file, other days from theirs.

        A day whose rollups are missing or were built from other files than it
        holds now is computed from its rows here (and not written: only
        ``compact`` writes, under its lock).
        """
        months: dict[date, list[date]] = {}
        layout = self.layout()
        for day in layout:
            if (start is None or day >= start) and (end is None or day <= end):
                months.setdefault(day.replace(day=1), []).append(day)
        fresh: list[str] = []
        computed: dict[str, list[pl.DataFrame]] = {name: [] for name in names}
        # The records are read up front (by a few threads on an object store): the
        # whole months' first, then the days' of the months those do not answer.
        whole = [
            month
            for month in months
            if (start is None or start <= month)
            and (end is None or end >= (month + timedelta(days=32)).replace(day=1) - timedelta(1))
        ]
        month_records = dict(
            zip(whole, self._map(self._recorded, [_month_dir(m) for m in whole]), strict=True)
        )
        answered = {
            month
            for month, days in months.items()
            if month in month_records
            and month_records[month]
            == _record({d.isoformat(): self._sources(d, layout) for d in days})
        }
        stale = [day for month, days in months.items() if month not in answered for day in days]
        day_records = dict(
            zip(
                stale,
                self._map(self._recorded, [_day_dir(ROLLUPS, d) for d in stale]),
                strict=True,
            )
        )
        rebuilt = self._days_rollups(
            [d for d in stale if day_records[d] != _record(self._sources(d, layout))], layout
        )
        for month, days in months.items():
            if month in answered:
                fresh.append(_month_dir(month))
                continue
            for day in days:
                if day not in rebuilt:
                    fresh.append(_day_dir(ROLLUPS, day))
                    continue
                for name in names:
                    computed[name].append(rebuilt[day][name])
        out = {}
        for name in names:
            parts = computed[name]
            if fresh:
                parts = [self.store.read([f"{f}/{name}.parquet" for f in fresh]), *parts]
            out[name] = pl.concat(parts) if parts else pl.DataFrame(schema=ROLLUP_SCHEMAS[name])
        return out

    def scan(
        self,
        table: str,
        start: date | None = None,
        end: date | None = None,
        types: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        layout: Layout | None = None,
    ) -> pl.DataFrame:
        """The table's rows whose day is in ``[start, end]`` (open ends), deduplicated;
        only events of ``types`` when given (``events`` only), only ``columns`` if given.

        A duplicate always lands in the same day (the day is the event's own), so
        only days holding more than one file are deduplicated: a compacted day is
        read as it is. A file compacted away under the read (deleted after the
        manifest swap) makes it start again from the new layout.
        """
        given = layout
        layout = layout if layout is not None else self.layout([table])
        for attempt in range(3):
            try:
                return self._scan(layout, table, start, end, types, columns)
            except Exception:
                again = self.layout([table])
                if given is not None:  # the caller's days only
                    again = {d: t for d, t in again.items() if d in given}
                if again == {d: t for d, t in layout.items() if table in t} or attempt == 2:
                    raise
                layout = again
        raise AssertionError("unreachable")

    def _scan(
        self,
        layout: Layout,
        table: str,
        start: date | None,
        end: date | None,
        types: Sequence[str] | None,
        columns: Sequence[str] | None,
    ) -> pl.DataFrame:
        spec = TABLES[table]
        wanted = list(columns) if columns is not None else list(spec.schema)
        compacted: list[str] = []
        loose: list[str] = []
        for day, tables in layout.items():
            if (start is not None and day < start) or (end is not None and day > end):
                continue
            names = tables.get(table, [])
            keys = [f"{_day_dir(table, day)}/{n}" for n in names]
            (compacted if len(names) == 1 else loose).extend(keys)
        parts = []
        for keys, dedupe in ((compacted, False), (loose, True)):
            if not keys:
                continue
            lazy = self.store.scan(keys)
            if types is not None:
                lazy = lazy.filter(pl.col("type").is_in(list(types)))
            if dedupe:
                lazy = lazy.unique(subset=list(spec.key), keep="any")
            parts.append(lazy.select(wanted))
        if not parts:
            return frame(table, []).select(wanted)
        return pl.concat(parts).collect()
