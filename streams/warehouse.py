"""The analytics warehouse: events as Parquet files, one directory per table and day.

Layout under the root (``var/warehouse`` by default)::

    events/day=2026-12-04/data.parquet          compacted: every event of that day
    events/day=2026-12-04/batch-<uuid7>.parquet  landed since the last compaction
    order_lines/day=2026-12-04/...               one row per line of a paid order
    paid_orders/day=2026-12-04/...               one row per paid order (its totals)

``rows_for`` turns one event (and, for ``order.confirmed``, the order's lines
and totals with each product's category) into rows; it is pure, so a replay
of the same events gives the same rows. ``Warehouse.land`` writes a batch as
new files (write to a temporary name, then rename: a reader never sees half a
file). The day is the event's ``occurred_at`` day, so a late event lands in
its own (older) day. Nothing is ever updated in place: a duplicate (an event
redelivered, or replayed) is a second row with the same ``event_id``, dropped
by ``compact`` and by every ``scan``.

``compact`` rewrites a day's files as one ``data.parquet``: rows deduplicated
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

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    uuid7,
)

EVENTS = "events"
ORDER_LINES = "order_lines"
PAID_ORDERS = "paid_orders"
DATA_FILE = "data.parquet"
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


def _day_dir(root: Path, table: str, day: date) -> Path:
    return root / table / f"day={day.isoformat()}"


def _month_dir(root: Path, day: date) -> Path:
    return root / ROLLUPS / f"month={day.isoformat()[:7]}"


def _year_dir(root: Path, year: int) -> Path:
    return root / ROLLUPS / f"year={year:04d}"


def _record(sources: Mapping[str, Any]) -> str:
    return json.dumps({**sources, "rollups": ROLLUP_VERSION}, sort_keys=True, separators=(",", ":"))


def _day_of(path: Path) -> date | None:
    name = path.name
    if not name.startswith("day="):
        return None
    try:
        return date.fromisoformat(name[4:])
    except ValueError:
        return None


def _write(df: pl.DataFrame, path: Path) -> None:
    """Write ``df`` beside ``path`` and rename it into place (readers see all or nothing)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp, row_group_size=_ROW_GROUP, **_WRITE)  # type: ignore[arg-type]
    os.replace(tmp, path)


def normalise(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Deduplicated by key (first seen wins) and in the table's canonical order."""
    spec = TABLES[table]
    df = df.select([pl.col(c).cast(t) for c, t in spec.schema.items()])
    return df.unique(subset=list(spec.key), keep="first", maintain_order=True).sort(spec.order)


class Warehouse:
    """Parquet files under ``root``: land batches, compact days, scan date ranges."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def days(self, table: str) -> list[date]:
        base = self.root / table
        if not base.is_dir():
            return []
        return sorted(d for p in base.iterdir() if p.is_dir() and (d := _day_of(p)) is not None)

    def files(self, table: str, day: date) -> list[Path]:
        folder = _day_dir(self.root, table, day)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def land(self, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[Path]:
        """Write rows (by table) as one new file per table and day; the files written."""
        written = []
        for table, table_rows in rows.items():
            written += self.land_frame(table, frame(table, table_rows))
        return written

    def land_frame(self, table: str, df: pl.DataFrame) -> list[Path]:
        """Write a frame of ``table``'s schema as one new file per day; the files written."""
        if df.is_empty():
            return []
        written = []
        df = df.with_columns(pl.col("occurred_at").dt.date().alias("_day"))
        for (day,), part in df.partition_by("_day", as_dict=True).items():
            assert isinstance(day, date)
            folder = _day_dir(self.root, table, day)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"batch-{uuid7()}.parquet"
            _write(normalise(table, part.drop("_day")), path)
            written.append(path)
        return written

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".compact.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def compact(self, min_files: int = 2) -> int:
        """Rewrite each day with ``min_files`` or more files as one file; days rewritten.

        Files landed while a day is compacted are left for the next round;
        the compacted file replaces ``data.parquet`` atomically before the
        batches it absorbed are deleted, so a reader at worst sees a row
        twice (and drops it by key), never loses one.
        """
        rewritten = 0
        with self._lock():
            for table in TABLES:
                for day in self.days(table):
                    files = self.files(table, day)
                    if len(files) < min_files:
                        continue
                    merged = normalise(table, pl.read_parquet(files))
                    # The day's rollups are stale from here until rebuilt below (a
                    # crash in between leaves no sources.json: rebuilt on read).
                    self._invalidate(day)
                    _write(merged, _day_dir(self.root, table, day) / DATA_FILE)
                    for path in files:
                        if path.name != DATA_FILE:
                            path.unlink(missing_ok=True)
                    rewritten += 1
            self._refresh_rollups()
        return rewritten

    # --- rollups ----------------------------------------------------------------------------

    def _all_days(self) -> list[date]:
        return sorted({d for table in TABLES for d in self.days(table)})

    def _sources(self, day: date) -> dict[str, list[str]]:
        """The day's table files (their names: a rewrite of ``data.parquet`` first
        removes the records naming it, so the name alone is enough)."""
        out = {}
        for table in TABLES:
            try:
                names = os.listdir(_day_dir(self.root, table, day))
            except FileNotFoundError:
                names = []
            out[table] = sorted(n for n in names if n.endswith(".parquet") and n[0] != ".")
        return out

    def _recorded(self, folder: Path) -> str | None:
        try:
            return (folder / SOURCES_FILE).read_text()
        except FileNotFoundError:
            return None

    def _invalidate(self, day: date) -> None:
        """Forget what the day's (and its month's and year's) rollups were built from."""
        for folder in (
            _day_dir(self.root, ROLLUPS, day),
            _month_dir(self.root, day),
            _year_dir(self.root, day.year),
        ):
            (folder / SOURCES_FILE).unlink(missing_ok=True)

    def _day_rollups(self, day: date) -> dict[str, pl.DataFrame]:
        """The day's rollups computed from its rows (what ``compact`` writes)."""
        rows = {t: self.scan(t, day, day, columns=ROLLUP_COLUMNS[t]) for t in TABLES}
        refunds = self.scan(EVENTS, day, day, types=[PAYMENT_REFUNDED.name], columns=REFUND_COLUMNS)
        return build_rollups(day, rows[EVENTS], rows[ORDER_LINES], rows[PAID_ORDERS], refunds)

    def _write_rollups(
        self, folder: Path, rollups: Mapping[str, pl.DataFrame], record: str
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SOURCES_FILE).unlink(missing_ok=True)
        for name, df in rollups.items():
            _write(df, folder / f"{name}.parquet")
        # Written last: the rollups count only once all of them are in place.
        tmp = folder / f".{SOURCES_FILE}.{os.getpid()}.tmp"
        tmp.write_text(record)
        os.replace(tmp, folder / SOURCES_FILE)

    def _refresh_rollups(self) -> None:
        """Rebuild every day's and month's rollups that no longer match their files."""
        months: dict[date, dict[str, Any]] = {}
        for day in self._all_days():
            sources = self._sources(day)
            record = _record(sources)
            folder = _day_dir(self.root, ROLLUPS, day)
            if self._recorded(folder) != record:
                self._write_rollups(folder, self._day_rollups(day), record)
            months.setdefault(day.replace(day=1), {})[day.isoformat()] = sources
        for month, days in months.items():
            folder = _month_dir(self.root, month)
            record = _record(days)
            if self._recorded(folder) != record:
                day_dirs = [_day_dir(self.root, ROLLUPS, date.fromisoformat(d)) for d in days]
                merged = {
                    name: merge_rollup(
                        name, pl.read_parquet([f / f"{name}.parquet" for f in day_dirs])
                    )
                    for name in ROLLUP_SCHEMAS
                }
                self._write_rollups(folder, merged, record)
        years: dict[int, dict[str, Any]] = {}
        for month, days in months.items():
            years.setdefault(month.year, {}).update(days)
        for year, days in years.items():
            folder = _year_dir(self.root, year)
            record = _record(days)
            if self._recorded(folder) != record:
                day_dirs = [_day_dir(self.root, ROLLUPS, date.fromisoformat(d)) for d in days]
                funnel = pl.read_parquet([f / "funnel.parquet" for f in day_dirs])
                self._write_rollups(folder, funnel_year(funnel), record)

    def funnel_sets(self, start: date, end: date) -> dict[str, pl.DataFrame]:
        """The funnel over ``[start, end]``: ``events`` (type, events; a row per day or
        year part) and ``visitors`` (type, visitor; a visitor may repeat, the caller
        counts distinct). A year's file answers for its days still as it recorded them;
        any other day comes from its own rollups (or rows)."""
        events: list[pl.DataFrame] = []
        visitors: list[pl.DataFrame] = []
        years: dict[int, list[date]] = {}
        for day in self._all_days():
            if start <= day <= end:
                years.setdefault(day.year, []).append(day)
        for year, days in years.items():
            folder = _year_dir(self.root, year)
            recorded = json.loads(self._recorded(folder) or "{}")
            good = [
                d
                for d in days
                if recorded.get("rollups") == ROLLUP_VERSION
                and recorded.get(d.isoformat()) == self._sources(d)
            ]
            if good:
                counts = pl.read_parquet(folder / "funnel_events.parquet")
                events.append(counts.filter(pl.col("day").is_in(good)).select("type", "events"))
                sets = pl.read_parquet(folder / "funnel_visitors.parquet")
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
        for day in self._all_days():
            if (start is None or day >= start) and (end is None or day <= end):
                months.setdefault(day.replace(day=1), []).append(day)
        fresh: list[Path] = []
        computed: dict[str, list[pl.DataFrame]] = {name: [] for name in names}
        for month, days in months.items():
            sources = {day: self._sources(day) for day in days}
            month_end = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            whole = (start is None or start <= month) and (end is None or end >= month_end)
            if whole:
                folder = _month_dir(self.root, month)
                if self._recorded(folder) == _record(
                    {d.isoformat(): s for d, s in sources.items()}
                ):
                    fresh.append(folder)
                    continue
            for day, day_sources in sources.items():
                folder = _day_dir(self.root, ROLLUPS, day)
                if self._recorded(folder) == _record(day_sources):
                    fresh.append(folder)
                    continue
                day_rollups = self._day_rollups(day)
                for name in names:
                    computed[name].append(day_rollups[name])
        out = {}
        for name in names:
            parts = computed[name]
            if fresh:
                parts = [pl.read_parquet([f / f"{name}.parquet" for f in fresh]), *parts]
            out[name] = pl.concat(parts) if parts else pl.DataFrame(schema=ROLLUP_SCHEMAS[name])
        return out

    def scan(
        self,
        table: str,
        start: date | None = None,
        end: date | None = None,
        types: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """The table's rows whose day is in ``[start, end]`` (open ends), deduplicated;
        only events of ``types`` when given (``events`` only), only ``columns`` if given.

        A duplicate always lands in the same day (the day is the event's own), so
        only days holding more than one file are deduplicated: a compacted day is
        read as it is.
        """
        spec = TABLES[table]
        wanted = list(columns) if columns is not None else list(spec.schema)
        compacted: list[Path] = []
        loose: list[Path] = []
        for day in self.days(table):
            if (start is not None and day < start) or (end is not None and day > end):
                continue
            files = self.files(table, day)
            (compacted if len(files) == 1 else loose).extend(files)
        parts = []
        for files, dedupe in ((compacted, False), (loose, True)):
            if not files:
                continue
            lazy = pl.scan_parquet(files)
            if types is not None:
                lazy = lazy.filter(pl.col("type").is_in(list(types)))
            if dedupe:
                lazy = lazy.unique(subset=list(spec.key), keep="any")
            parts.append(lazy.select(wanted))
        if not parts:
            return frame(table, []).select(wanted)
        return pl.concat(parts).collect()
