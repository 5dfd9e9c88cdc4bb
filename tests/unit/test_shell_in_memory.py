"""A shard shell runs with Ray forbidden: store, pool and clock injected as a ``ShardEnv``.

The cart shell is driven through its protocol methods against an in-memory
store; a second shell on the same store (a restart) reloads what the first
one flushed, with its events in the (in-memory) outbox.
"""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace
from typing import Any

from actors.cart.actor import CartShardImpl
from actors.messages import Rejected
from actors.shard import ShardEnv


class MemoryStore:
    """The ``Store`` port over a dict: versioned upserts, as the PostgreSQL adapter does."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[dict[str, Any], int]] = {}

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        for key, doc, version in rows:
            if key not in self.rows or self.rows[key][1] < version:
                self.rows[key] = (json.loads(json.dumps(doc)), version)

    async def load(self, conn: Any, key: str) -> tuple[dict[str, Any], int] | None:
        return self.rows.get(key)


class MemoryConnection:
    """What the flusher asks of a connection: a transaction and ``executemany`` (outbox)."""

    def __init__(self, outbox: list[tuple[Any, ...]]) -> None:
        self.outbox = outbox

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # type: ignore[return-value]

    async def executemany(self, _sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.outbox.extend(rows)


class MemoryPool:
    def __init__(self) -> None:
        self.outbox: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> Any:
        yield MemoryConnection(self.outbox)


def env(store: MemoryStore, pool: MemoryPool, now: list[int]) -> ShardEnv:
    settings = SimpleNamespace(
        flush_batch_size=100,
        flush_interval_ms=10,
        shard_max_keys=1000,
        cart_max_lines=3,
        cart_max_quantity=5,
        events_tenant="agora",
        events_namespace="events",
    )

    async def open_pool() -> MemoryPool:
        return pool

    return ShardEnv(settings=settings, store=store, open_pool=open_pool, clock=lambda: now[0])


async def test_a_cart_shell_runs_on_an_in_memory_store_and_survives_a_restart():
    store, pool, now = MemoryStore(), MemoryPool(), [1_700_000_000_000]
    shell = CartShardImpl("agora:cart:0", env(store, pool, now))
    await shell.ping()
    view = await shell.add_item("c1", "SKU-1", "Mug", 1990, 2)
    assert not isinstance(view, Rejected)
    assert [(x.sku, x.quantity) for x in view.lines] == [("SKU-1", 2)]
    refused = await shell.add_item("c1", "SKU-1", "Mug", 1990, 4)
    assert isinstance(refused, Rejected) and refused.code == "quantity-limit"
    await shell.persist("c1")
    assert store.rows["c1"][1] == 1
    assert [row[3] for row in pool.outbox] == ["cart.item_added"]
    await shell.drain()

    restarted = CartShardImpl("agora:cart:0", env(store, pool, now))
    await restarted.ping()
    again = await restarted.view("c1")
    assert [(x.sku, x.quantity) for x in again.lines] == [("SKU-1", 2)]
    assert restarted.loads == 1
    await restarted.drain()
