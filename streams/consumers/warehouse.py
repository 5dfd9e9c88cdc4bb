"""The warehouse consumer: commerce events from Pulsar into the Parquet warehouse.

It reads the ``carts``, ``orders``, ``payments``, ``inventory`` and ``views``
topics on the idempotent consumer base (Key_Shared, retries, dead-letter
topic) but records no ``processed_events`` row: the warehouse deduplicates by
event id itself (``streams.warehouse``), so a redelivered event costs a
duplicate row that compaction and every read drop.

Each event is first appended to a journal file (one JSON line: the event and,
for ``order.confirmed``, the order's lines, totals and categories read from
PostgreSQL; a local file, also when the warehouse is in an object store: an
object cannot be appended to) and then acknowledged; ``tick`` turns the journal
into Parquet files every ``flush_s`` (or ``flush_rows`` events) and empties it, and
compacts the day partitions every ``compact_every_s`` (which also rebuilds
the rollups of the days that changed, the ones the reports read). A consumer killed
between acknowledging and flushing finds its journal on restart and lands it
first: nothing acknowledged is lost, and a flush cut short only duplicates.

``replay`` is ``agora analytics rebuild``: the same rows from a reader at the
start of every topic into a fresh warehouse, compacted at the end, so two
replays of the same events give byte-identical files (rollups included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pulsar

from streams.consumer import IdempotentConsumer
from streams.events import (
    CART_ITEM_ADDED,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    PAYMENT_PROCESSED,
    PRODUCT_VIEWED,
    Envelope,
    decode,
    topic_for,
)
from streams.outbox import pulsar_logger
from streams.warehouse import Warehouse, rows_for
from streams.warehouse_store import local_path

log = logging.getLogger(__name__)

# One event of each domain the reports read; the topic is the domain's.
DOMAINS = (CART_ITEM_ADDED, ORDER_CONFIRMED, PAYMENT_PROCESSED, INVENTORY_CHANGED, PRODUCT_VIEWED)
READ_IDLE_MS = 1_000


def warehouse_topics(tenant: str, namespace: str) -> list[str]:
    return sorted({topic_for(e.name, tenant, namespace) for e in DOMAINS})


_ORDER = "SELECT data::text FROM orders WHERE order_id = $1"
_CATEGORIES = "SELECT sku, category FROM products WHERE sku = ANY($1::text[])"


async def enrichment(conn: asyncpg.Connection, envelope: Envelope) -> dict[str, Any]:
    """What ``rows_for`` needs beyond the event: a paid order's lines, totals and categories.

    Lines and totals are fixed once the order is priced; the category is the
    product's current one (a recategorised product moves in a rebuild).
    """
    if envelope.type != ORDER_CONFIRMED.name:
        return {}
    order_id = envelope.payload.get("order_id")
    data = await conn.fetchval(_ORDER, str(order_id)) if order_id else None
    if data is None:
        log.warning("warehouse: order %s not found; landed without lines", order_id)
        return {}
    order = json.loads(data)
    kept = {"lines": order.get("lines") or [], "totals": order.get("totals") or {}}
    skus = sorted({str(line.get("sku")) for line in kept["lines"]})
    rows = await conn.fetch(_CATEGORIES, skus) if skus else []
    return {"order": kept, "categories": {r["sku"]: r["category"] for r in rows}}


class WarehouseConsumer(IdempotentConsumer):
    """Events -> journal -> Parquet day partitions; periodic compaction."""

    max_attempts = 3

    def __init__(
        self,
        tenant: str,
        namespace: str,
        root: str | Path,
        name: str = "warehouse",
        flush_s: float = 1.0,
        flush_rows: int = 5_000,
        compact_every_s: float = 300.0,
        journal_dir: Path | None = None,
    ) -> None:
        super().__init__(name=name, topics=warehouse_topics(tenant, namespace))
        # A directory, file:///dir or s3://... (streams.warehouse_store); the journal is
        # always a local file: in the directory, or in ``journal_dir`` (an object store).
        local = local_path(root)
        self.root: str | Path = local if local is not None else str(root)
        if journal_dir is None:
            if local is None:
                raise ValueError("a warehouse in an object store needs a local journal_dir")
            journal_dir = local / "_journal"
        self.journal_dir = journal_dir
        self.flush_s = flush_s
        self.flush_rows = flush_rows
        self.compact_every_s = compact_every_s
        self._pending = 0
        self._oldest = 0.0
        self._next_compact = time.monotonic() + compact_every_s
        self._recovered = False

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.root)

    @property
    def journal(self) -> Path:
        return self.journal_dir / f"{self.name}.jsonl"

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        """Journal the event (no ``processed_events``: the warehouse dedupes by event id)."""
        self._recover()
        if envelope.type == ORDER_CONFIRMED.name:
            async with pool.acquire() as conn:
                await self.apply(conn, envelope)
        else:
            self._journal(envelope, {})
        return True

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        self._journal(envelope, await enrichment(conn, envelope))

    def _journal(self, envelope: Envelope, extra: Mapping[str, Any]) -> None:
        # A bad event fails here, before it is acknowledged (then dead-lettered).
        rows_for(envelope, extra.get("order"), extra.get("categories"))
        line = msgspec.json.encode({"event": envelope, **extra}) + b"\n"
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        if self._pending == 0:
            self._oldest = time.monotonic()
        self._pending += 1

    async def tick(self, pool: asyncpg.Pool) -> None:
        """Flush the journal when due, compact when due."""
        del pool
        self._recover()
        now = time.monotonic()
        if self._pending and (
            self._pending >= self.flush_rows or now - self._oldest >= self.flush_s
        ):
            await asyncio.to_thread(self.flush)
        if now >= self._next_compact:
            self._next_compact = now + self.compact_every_s
            await asyncio.to_thread(self.warehouse.compact)

    def _recover(self) -> None:
        """First thing in a process: what a previous run journaled is due at once."""
        if not self._recovered:
            if self.journal.exists() and self.journal.stat().st_size:
                # Due at once (-inf: time.monotonic() counts from boot, may be < flush_s).
                self._pending, self._oldest = max(self._pending, 1), float("-inf")
            self._recovered = True

    def flush(self) -> int:
        """Land the journal as Parquet files and empty it; the events landed."""
        if not self.journal.exists():
            self._pending = 0
            return 0
        landed = land_journal(self.warehouse, self.journal)
        self._pending = 0
        return landed


def land_journal(warehouse: Warehouse, journal: Path) -> int:
    """Land every complete line of ``journal`` then truncate it; a torn last line is dropped."""
    raw = journal.read_bytes()
    rows: dict[str, list[dict[str, Any]]] = {}
    count = 0
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
            envelope = msgspec.convert(entry["event"], Envelope)
            produced = rows_for(envelope, entry.get("order"), entry.get("categories"))
        except (ValueError, KeyError, msgspec.ValidationError) as exc:
            log.warning("warehouse: journal line skipped: %s", exc)
            continue
        for table, table_rows in produced.items():
            rows.setdefault(table, []).extend(table_rows)
        count += 1
    warehouse.land(rows)
    # Only what was read is removed: an append racing this (same process) keeps its bytes.
    with open(journal, "r+b") as handle:
        rest = handle.read()[len(raw) :]
        handle.seek(0)
        handle.write(rest)
        handle.truncate()
    return count


async def replay(
    pulsar_url: str,
    topics: Sequence[str],
    pool: asyncpg.Pool,
    warehouse: Warehouse,
    progress: Callable[[int], None] | None = None,
    batch: int = 20_000,
    idle_ms: int = READ_IDLE_MS,
) -> int:
    """Read every topic from its first message to its end into ``warehouse``.

    The end is when no message comes for ``idle_ms``: pulsar-lite refuses
    GetLastMessageId on a reader's non-durable subscription, so
    ``has_message_available`` cannot tell.

    The warehouse is compacted at the end (every day, even with one file), so
    the result depends only on the events and the orders they name.
    """
    loop = asyncio.get_running_loop()
    client = pulsar.Client(pulsar_url, logger=pulsar_logger(), operation_timeout_seconds=10)
    total = 0
    try:
        for topic in topics:
            reader = await loop.run_in_executor(
                None, client.create_reader, topic, pulsar.MessageId.earliest
            )
            try:
                rows: dict[str, list[dict[str, Any]]] = {}
                pending = 0
                while True:
                    try:
                        message = await loop.run_in_executor(None, reader.read_next, idle_ms)
                    except pulsar.Timeout:
                        break  # the end: nothing more for ``idle_ms``
                    try:
                        envelope = decode(message.data())
                        extra: dict[str, Any] = {}
                        if envelope.type == ORDER_CONFIRMED.name:
                            async with pool.acquire() as conn:
                                extra = await enrichment(conn, envelope)
                        produced = rows_for(envelope, extra.get("order"), extra.get("categories"))
                    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                        log.warning("replay: skipped a message on %s: %s", topic, exc)
                        continue
                    for table, table_rows in produced.items():
                        rows.setdefault(table, []).extend(table_rows)
                    pending += 1
                    total += 1
                    if progress is not None:
                        progress(1)
                    if pending >= batch:
                        await asyncio.to_thread(warehouse.land, rows)
                        rows, pending = {}, 0
                if pending:
                    await asyncio.to_thread(warehouse.land, rows)
            finally:
                await loop.run_in_executor(None, reader.close)
    finally:
        await loop.run_in_executor(None, client.close)
    await asyncio.to_thread(warehouse.compact, 1)
    return total
