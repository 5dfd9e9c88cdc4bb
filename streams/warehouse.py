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
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from streams.events import (
    CART_ITEM_ADDED,
    EVENT_TYPES,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    PRODUCT_VIEWED,
    Envelope,
    uuid7,
)

EVENTS = "events"
ORDER_LINES = "order_lines"
PAID_ORDERS = "paid_orders"
DATA_FILE = "data.parquet"

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


def frame(table: str, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows as a frame of ``table``'s schema (an empty frame keeps the schema)."""
    schema = TABLES[table].schema
    return pl.DataFrame(list(rows), schema=dict(schema), orient="row")


def _day_dir(root: Path, table: str, day: date) -> Path:
    return root / table / f"day={day.isoformat()}"


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
                    _write(merged, _day_dir(self.root, table, day) / DATA_FILE)
                    for path in files:
                        if path.name != DATA_FILE:
                            path.unlink(missing_ok=True)
                    rewritten += 1
        return rewritten

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
