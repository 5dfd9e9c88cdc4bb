"""A signed-in shopper's recently viewed products, for recommendations (issue 9).

One Redis list per shopper (``agora:recent-views:<user id>``), newest first,
``MAX_RECENT`` long, each entry ``<unix seconds>:<sku>``, expiring
``recommend_recent_s`` after the last view; ``recent_views`` reads it for
``GET /v1/recommendations``.

The product page (``GET /v1/products/{sku}``) has a throughput target, so it
never waits for Redis: ``RecentViewBuffer.note`` appends to an in-memory queue
of this replica (bounded: a full queue drops the view and counts it), and a
task on the replica's event loop writes what gathered every ``FLUSH_S`` in
one pipeline (one ``LPUSH``/``LTRIM``/``EXPIRE`` per shopper). A view shapes
recommendations within ``FLUSH_S`` plus one Redis round trip; a view lost to a
Redis outage is dropped (counted), never retried: it is a hint, not a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

MAX_RECENT = 20
FLUSH_S = 0.25
FLUSH_MAX = 5_000  # views written per pipeline at most

RECENT_DROPPED = Counter(
    "agora_recent_views_dropped_total",
    "Product views not recorded for recommendations (queue full or Redis failed)",
    ["reason"],
)


def recent_key(user_id: str) -> str:
    return f"agora:recent-views:{user_id}"


def _entry(stamp: int, sku: str) -> str:
    return f"{stamp}:{sku}"


async def write_views(redis: Any, ttl_s: int, views: list[tuple[str, str, int]]) -> None:
    """Write ``(user_id, sku, unix seconds)`` views, oldest first, in one pipeline."""
    per_user: dict[str, list[str]] = {}
    for user_id, sku, stamp in views:
        per_user.setdefault(user_id, []).append(_entry(stamp, sku))
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, entries in per_user.items():
            key = recent_key(user_id)
            pipe.lpush(key, *entries[-MAX_RECENT:])  # the last pushed ends up first
            pipe.ltrim(key, 0, MAX_RECENT - 1)
            pipe.expire(key, ttl_s)
        await pipe.execute()


async def recent_views(redis: Any, user_id: str, horizon_s: int) -> list[str]:
    """The shopper's viewed SKUs within ``horizon_s``, newest first."""
    horizon = time.time() - horizon_s
    raw = await redis.lrange(recent_key(user_id), 0, MAX_RECENT - 1)
    views = []
    for item in raw:
        stamp, _, sku = (item.decode() if isinstance(item, bytes) else str(item)).partition(":")
        if stamp.isdigit() and int(stamp) >= horizon and sku:
            views.append(sku)
    return views


class RecentViewBuffer:
    """Views noted without waiting, written to Redis by a task of the running loop."""

    def __init__(self, redis: Any, ttl_s: int, capacity: int, flush_s: float = FLUSH_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._flush_s = flush_s
        self._pending: deque[tuple[str, str, int]] = deque()
        self._task: asyncio.Task[None] | None = None

    def note(self, user_id: str, sku: str) -> bool:
        """Queue one view (no I/O); False when the queue is full and the view dropped."""
        if len(self._pending) >= self._capacity:
            RECENT_DROPPED.labels("full").inc()
            return False
        self._pending.append((user_id, sku, int(time.time())))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return True

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is queued now (up to ``FLUSH_MAX``); the number of views taken."""
        batch = [self._pending.popleft() for _ in range(min(len(self._pending), FLUSH_MAX))]
        if not batch:
            return 0
        try:
            await write_views(self._redis, self._ttl_s, batch)
        except Exception as exc:  # a hint lost, never a failed page
            RECENT_DROPPED.labels("error").inc(len(batch))
            log.warning("could not record %d recent views: %s", len(batch), type(exc).__name__)
        return len(batch)

    async def _drain(self) -> None:
        """Flush every ``flush_s`` while views arrive; ends when the queue is empty."""
        while self._pending:
            await asyncio.sleep(self._flush_s)
            await self.flush()
