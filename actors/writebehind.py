"""Write-behind persistence shared by every shard kind.

``DirtyTracker`` is the pure core: which keys changed (and at which version),
which events they produced, and when a flush is due. Time is passed in.
``Flusher`` is the async shell a shard actor runs: every ``interval_ms`` (or as
soon as a batch fills) it writes the dirty rows and their events to the
outbox in one transaction, then wakes the callers waiting on the durable
path (group commit). A batch that fails because the database is away is put
back and retried whole. A batch that fails on its data (a row PostgreSQL
refuses, e.g. a NUL byte in a text) is retried row by row: the rows that still
fail are quarantined (parked: kept dirty in memory, never flushed again until
they change, counted in the stats), and the rest commit. One bad row never
stalls a shard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.messages import now_ms
from streams.events import Envelope, encode, topic_for
from streams.tracing import linked_span, stamp

log = logging.getLogger(__name__)


@dataclass
class _Dirty:
    version: int
    since_ms: int
    events: list[Envelope] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    keys: list[str]
    versions: dict[str, int]
    events: list[Envelope]
    oldest_ms: int


class DirtyTracker:
    """Pure bookkeeping of dirty keys and their pending events.

    A parked (quarantined) key stays dirty (never evicted, never lost) but is
    neither counted in ``len`` nor taken, until a new change marks it again.
    """

    def __init__(self, batch_size: int, interval_ms: int) -> None:
        self.batch_size = batch_size
        self.interval_ms = interval_ms
        self._dirty: dict[str, _Dirty] = {}
        self._parked: dict[str, _Dirty] = {}

    def __len__(self) -> int:
        return len(self._dirty)

    def is_dirty(self, key: str) -> bool:
        return key in self._dirty or key in self._parked

    def is_parked(self, key: str) -> bool:
        return key in self._parked

    def parked(self) -> list[str]:
        return list(self._parked)

    def park(self, batch: Batch, key: str) -> bool:
        """Quarantine ``key`` of a taken batch with its events (they failed on their data).

        False when the key changed while it was being written: the change may
        have repaired it, so it stays dirty (events first) and is tried again.
        """
        events = [e for e in batch.events if e.key == key]
        entry = self._dirty.get(key)
        if entry is not None:
            entry.version = max(entry.version, batch.versions[key])
            entry.since_ms = min(entry.since_ms, batch.oldest_ms)
            entry.events[:0] = events
            return False
        self._parked[key] = _Dirty(batch.versions[key], batch.oldest_ms, events)
        return True

    def mark(self, key: str, version: int, events: list[Envelope], now_ms: int) -> None:
        parked = self._parked.pop(key, None)
        if parked is not None:
            # A new change may have repaired the row: try it again, events first.
            parked.version = max(parked.version, version)
            parked.events.extend(events)
            parked.since_ms = now_ms
            self._dirty[key] = parked
            return
        entry = self._dirty.get(key)
        if entry is None:
            self._dirty[key] = _Dirty(version, now_ms, list(events))
        else:
            entry.version = max(entry.version, version)
            entry.events.extend(events)

    def oldest_ms(self) -> int | None:
        return min((d.since_ms for d in self._dirty.values()), default=None)

    def due(self, now_ms: int) -> bool:
        if not self._dirty:
            return False
        if len(self._dirty) >= self.batch_size:
            return True
        oldest = self.oldest_ms()
        return oldest is not None and now_ms - oldest >= self.interval_ms

    def take(self) -> Batch:
        """Remove up to ``batch_size`` keys (oldest first) with their events."""
        keys = sorted(self._dirty, key=lambda k: self._dirty[k].since_ms)[: self.batch_size]
        taken = {k: self._dirty.pop(k) for k in keys}
        events = [e for d in taken.values() for e in d.events]
        events.sort(key=lambda e: e.id)
        oldest = min((d.since_ms for d in taken.values()), default=0)
        return Batch(keys, {k: d.version for k, d in taken.items()}, events, oldest)

    def put_back(self, batch: Batch) -> None:
        """Return a failed batch: its keys are dirty again, its events go first."""
        for key in batch.keys:
            events = [e for e in batch.events if e.key == key]
            entry = self._dirty.get(key)
            if entry is None:
                self._dirty[key] = _Dirty(batch.versions[key], batch.oldest_ms, events)
            else:
                entry.version = max(entry.version, batch.versions[key])
                entry.since_ms = min(entry.since_ms, batch.oldest_ms)
                entry.events[:0] = events
        orphan = [e for e in batch.events if e.key not in batch.versions]
        if orphan:
            raise AssertionError("batch events without their key")


class Store(Protocol):
    """The persistence port of one shard kind."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        """Write ``(key, document, version)`` rows; an older version never overwrites."""

    async def load(self, conn: Any, key: str) -> tuple[dict[str, Any], int] | None:
        """The stored document and version of ``key``, or None."""


async def insert_outbox(
    conn: Any, events: list[Envelope], tenant: str = "agora", namespace: str = "events"
) -> None:
    if not events:
        return
    events = stamp(events)  # a direct writer inside a traced request
    await conn.executemany(
        "INSERT INTO outbox (event_id, topic, key, type, envelope)"
        " VALUES ($1::uuid, $2, $3, $4, $5::text::jsonb) ON CONFLICT (event_id) DO NOTHING",
        [
            (e.id, topic_for(e.type, tenant, namespace), e.key, e.type, encode(e).decode())
            for e in events
        ],
    )


class RowQuarantined(RuntimeError):
    """The change could not be persisted: PostgreSQL refuses its data; it is parked."""


def refused_data(exc: BaseException) -> bool:
    """Whether ``exc`` is about the rows' data (not the database being away).

    SQLSTATE classes 22 (data exception, e.g. a NUL byte in text) and 23
    (integrity constraint), and client-side encoding errors (asyncpg's
    ``DataError`` and ``UnicodeEncodeError`` are ``ValueError``s).
    """
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return sqlstate[:2] in ("22", "23") or isinstance(exc, ValueError | TypeError)


class Flusher:
    """Runs the flush loop of one shard: batches, transactions, durable waiters, metrics."""

    def __init__(
        self,
        tracker: DirtyTracker,
        store: Store,
        acquire: Callable[[], Any],
        snapshot: Callable[[str], tuple[Any, int] | None],
        clock: Callable[[], int] = now_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        topics: tuple[str, str] = ("agora", "events"),
    ) -> None:
        self.tracker = tracker
        self._topics = topics
        self._store = store
        self._acquire = acquire
        self._snapshot = snapshot
        self._clock = clock
        self._sleep = sleep
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, int] = {}
        self.committed_batches = 0
        self.committed_rows = 0
        self.committed_events = 0
        self.failed_batches = 0
        self.split_batches = 0
        self.quarantined_total = 0
        self.last_batch_size = 0
        self.last_flush_lag_ms = 0
        self.max_flush_lag_ms = 0

    def mark(self, key: str, version: int, events: list[Envelope]) -> None:
        self.tracker.mark(key, version, events, self._clock())
        if len(self.tracker) >= self.tracker.batch_size:
            self._wake.set()

    def durable(self, key: str, version: int) -> Awaitable[None]:
        """A future that completes once ``key`` at ``version`` (or newer) has committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.tracker.is_parked(key):
            future.set_exception(RowQuarantined(f"row {key} could not be persisted"))
            return future
        if not self.tracker.is_dirty(key) and self._inflight.get(key, -1) < version:
            future.set_result(None)
            return future
        self._waiters.setdefault(key, []).append((version, future))
        self._wake.set()
        return future

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                await asyncio.wait_for(
                    self._wake.wait(), timeout=max(self.tracker.interval_ms / 1000, backoff)
                )
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while self.tracker.due(self._clock()) or (self._waiters and len(self.tracker)):
                    await self.flush_once()
                backoff = 0.0
            except Exception:
                self.failed_batches += 1
                backoff = min(max(backoff * 2, 0.05), 2.0)
                log.exception("write-behind flush failed; retrying in %.2fs", backoff)

    async def flush_once(self) -> int:
        """Write one batch in one transaction; returns the number of rows written.

        When PostgreSQL refuses the batch's data, its keys are written one by one
        and those still refused are quarantined; any other failure puts the whole
        batch back and raises (the loop backs off and retries).
        """
        batch = self.tracker.take()
        if not batch.keys:
            return 0
        rows = self._rows(batch.keys)
        self._inflight.update(batch.versions)
        try:
            # A span (linked to the traced requests) only when some event is traced.
            figures = {"agora.rows": len(rows), "agora.events": len(batch.events)}
            with linked_span("write-behind flush", batch.events, attributes=figures):
                await self._write(rows, batch.events)
        except Exception as exc:
            if not refused_data(exc):
                self.tracker.put_back(batch)
                raise
            if len(batch.keys) > 1:
                return await self._one_by_one(batch)
            self._quarantine(batch, batch.keys[0], exc)
            return 0
        except BaseException:
            self.tracker.put_back(batch)
            raise
        finally:
            for key in batch.keys:
                self._inflight.pop(key, None)
        self._committed(batch, len(rows))
        return len(rows)

    def _rows(self, keys: list[str]) -> list[tuple[str, Any, int]]:
        rows = []
        for key in keys:
            snap = self._snapshot(key)
            if snap is not None:
                rows.append((key, snap[0], snap[1]))
        return rows

    async def _write(self, rows: list[tuple[str, Any, int]], events: list[Envelope]) -> None:
        async with self._acquire() as conn, conn.transaction():
            await self._store.upsert(conn, rows)
            await insert_outbox(conn, events, *self._topics)

    async def _one_by_one(self, batch: Batch) -> int:
        """A batch refused on its data: each key alone; quarantine those still refused."""
        self.split_batches += 1
        written = 0
        for i, key in enumerate(batch.keys):
            single = Batch(
                [key],
                {key: batch.versions[key]},
                [e for e in batch.events if e.key == key],
                batch.oldest_ms,
            )
            rows = self._rows([key])
            try:
                await self._write(rows, single.events)
            except Exception as exc:
                if not refused_data(exc):
                    rest = batch.keys[i:]
                    self.tracker.put_back(
                        Batch(
                            rest,
                            {k: batch.versions[k] for k in rest},
                            [e for e in batch.events if e.key in rest],
                            batch.oldest_ms,
                        )
                    )
                    raise
                self._quarantine(single, key, exc)
                continue
            written += len(rows)
            self._committed(single, len(rows))
        return written

    def _quarantine(self, batch: Batch, key: str, exc: Exception) -> None:
        """Park ``key`` (taken from the tracker) and fail its durable waiters."""
        if not self.tracker.park(batch, key):
            return
        self.quarantined_total += 1
        # Never the exception's text: it may quote the row (personal data).
        log.error(
            "write-behind: row %s quarantined (%s, sqlstate %s); the others keep flushing",
            key,
            type(exc).__name__,
            getattr(exc, "sqlstate", None),
        )
        for _version, future in self._waiters.pop(key, []):
            if not future.done():
                future.set_exception(RowQuarantined(f"row {key} could not be persisted"))

    def _committed(self, batch: Batch, rows: int) -> None:
        now = self._clock()
        self.committed_batches += 1
        self.committed_rows += rows
        self.committed_events += len(batch.events)
        self.last_batch_size = rows
        self.last_flush_lag_ms = now - batch.oldest_ms
        self.max_flush_lag_ms = max(self.max_flush_lag_ms, self.last_flush_lag_ms)
        self._resolve(batch.versions)

    def _resolve(self, versions: dict[str, int]) -> None:
        for key, version in versions.items():
            waiting = self._waiters.get(key)
            if not waiting:
                continue
            keep = []
            for wanted, future in waiting:
                if wanted <= version:
                    if not future.done():
                        future.set_result(None)
                else:
                    keep.append((wanted, future))
            if keep:
                self._waiters[key] = keep
            else:
                del self._waiters[key]

    async def drain(self) -> int:
        """Flush until nothing is dirty (graceful stop); returns rows written."""
        total = 0
        while len(self.tracker):
            total += await self.flush_once()
        return total

    def stats(self) -> dict[str, int]:
        oldest = self.tracker.oldest_ms()
        return {
            "dirty_keys": len(self.tracker),
            "pending_lag_ms": 0 if oldest is None else self._clock() - oldest,
            "committed_batches": self.committed_batches,
            "committed_rows": self.committed_rows,
            "committed_events": self.committed_events,
            "failed_batches": self.failed_batches,
            "split_batches": self.split_batches,
            "quarantined_rows": len(self.tracker.parked()),
            "quarantined_total": self.quarantined_total,
            "last_batch_size": self.last_batch_size,
            "last_flush_lag_ms": self.last_flush_lag_ms,
            "max_flush_lag_ms": self.max_flush_lag_ms,
        }
