"""Stock: the pure ``StockItem`` state (on hand, reservations with a TTL) and the
``InventoryShard`` actor.

``available = on_hand - reserved`` and it never goes negative: a reservation
that does not fit is refused, and on_hand cannot be set or adjusted below what
is reserved. Reserve, release and commit are idempotent by reservation id
(repeats answer as the first call did) and durable: answered only after the
batch holding the change has committed (group commit). Expired reservations
are released by a sweeper and ignored by reads before that.

SKUs move between shards live (``agora scale inventory=N``, ``actors.shard``): a
reservation is part of its SKU's stored row (with its absolute expiry), so the old
owner flushes it with the SKU and the new owner loads it, TTL and all, from
PostgreSQL. A many-line command checks that it owns every one of its SKUs, with no
await before it changes them (``_items``): it changes all of them here, or none and
answers "moved" (``actors.clients.InventoryClient`` regroups those lines on the newer
ring and sends them again, idempotent per reservation id).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray

from actors.inventory.model import (
    Audit,
    Done,
    Held,
    LineHold,
    Short,
    StockItem,
    StockView,
    committable,
    reserve_all,
    view_of,
)
from actors.messages import Rejected
from actors.shard import EnvFactory, KeyMoved, ShardEnv, ShardShell
from streams.events import Envelope

# ``_items`` loads a command's SKUs again when one was evicted meanwhile, at most this often.
ITEMS_TRIES = 5


class InventoryShardImpl(ShardShell[StockItem]):
    """Owns the stock of many SKUs; every change is answered after its commit."""

    movable = True  # ``agora scale``: a live rescale hands its SKUs over (actors.shard)

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)
        self._sweeper: asyncio.Task[None] | None = None

    def new_state(self, key: str) -> StockItem:
        return StockItem(key, known=False)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> StockItem:
        return StockItem.from_doc(key, doc, version)

    async def _get_pool(self) -> Any:
        pool = await super()._get_pool()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
        return pool

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_ms / 1000)
            now = self.clock()
            for sku, item in list(self.states.items()):
                if self.ring is not None and not self.ring.owns(sku):
                    continue  # being handed over (flushed as it is): its new owner sweeps it
                with contextlib.suppress(Exception):
                    if item.sweep(now):
                        self.changed(sku, item, [])

    async def _answer(
        self, item: StockItem, result: list[Envelope] | Rejected
    ) -> StockView | Rejected:
        if isinstance(result, Rejected):
            return result
        self.changed(item.sku, item, result)
        await self.flusher.durable(item.sku, item.version)
        return view_of(item, self.clock())

    async def _items(self, lines: tuple[LineHold, ...]) -> dict[str, StockItem]:
        """The states of every SKU of ``lines``, all owned and resident at the same instant.

        They load in parallel, so by the time the last one is there the ring may have given
        an earlier one away (its flush to the new owner is under way), or the LRU may have
        evicted it: both are checked again with no await before the caller changes anything,
        so a many-line command changes every SKU here or none (``KeyMoved``: "moved").
        """
        skus = list(dict.fromkeys(line.sku for line in lines))
        for _ in range(ITEMS_TRIES):
            states = await asyncio.gather(*[self.state(sku) for sku in skus])
            if self.ring is not None:  # a ring member: the ring may have moved meanwhile
                for sku in skus:
                    if not self.ring.owns(sku):
                        raise KeyMoved(sku, self.ring.owner(sku), self.ring.spec)
            if all(self.states.get(item.sku) is item for item in states):
                return {item.sku: item for item in states}
        raise RuntimeError(f"{self.name}: {len(skus)} SKUs do not stay resident together")

    async def _durable(self, items: list[StockItem], events: list[Envelope]) -> None:
        """Mark every changed item and wait for the one group commit that holds them all."""
        by_sku: dict[str, list[Envelope]] = {}
        for event in events:
            by_sku.setdefault(event.key, []).append(event)
        for item in items:
            self.changed(item.sku, item, by_sku.get(item.sku, []))
        await asyncio.gather(*[self.flusher.durable(item.sku, item.version) for item in items])

    async def get(self, sku: str) -> StockView | Rejected:
        """On hand, reserved and available for one SKU."""
        item = await self.state(sku)
        if not item.known:
            return Rejected("unknown-sku", f"{sku} is not a product")
        return view_of(item, self.clock())

    async def reserve(
        self,
        sku: str,
        rid: str,
        quantity: int,
        ttl_s: int | None = None,
        order_id: str | None = None,
    ) -> StockView | Rejected:
        """Hold ``quantity`` units under reservation ``rid`` (idempotent, durable)."""
        item = await self.state(sku)
        ttl_ms = (ttl_s or self.settings.reservation_ttl_s) * 1000
        return await self._answer(item, item.reserve(rid, quantity, self.clock(), ttl_ms, order_id))

    async def release(self, sku: str, rid: str) -> StockView | Rejected:
        """Give reserved units back (idempotent, durable)."""
        item = await self.state(sku)
        return await self._answer(item, item.release(rid, self.clock()))

    async def commit(self, sku: str, rid: str) -> StockView | Rejected:
        """Turn a reservation into a sale (idempotent, durable)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.commit(rid, self.clock(), self.settings.low_stock_threshold)
        )

    async def reserve_many(
        self, order_id: str, lines: tuple[LineHold, ...], ttl_s: int | None = None
    ) -> Held | Short:
        """Hold every line of one order on this shard, or none (idempotent per rid, durable)."""
        items = await self._items(lines)
        ttl_ms = (ttl_s or self.settings.reservation_ttl_s) * 1000
        short = reserve_all(items, lines, self.clock(), ttl_ms, order_id)
        if short:
            return Short(short)
        await self._durable(list(items.values()), [])
        return Held(tuple(line.rid for line in lines))

    async def commit_many(self, lines: tuple[LineHold, ...]) -> Done | Rejected:
        """Sell every reservation, or none when one is gone (idempotent, durable)."""
        items = await self._items(lines)
        refused = committable(items, lines)
        if refused is not None:
            return refused
        now, events = self.clock(), []
        for line in lines:
            result = items[line.sku].commit(line.rid, now, self.settings.low_stock_threshold)
            assert not isinstance(result, Rejected), result
            events.extend(result)
        await self._durable(list(items.values()), events)
        return Done(len(lines))

    async def release_many(self, lines: tuple[LineHold, ...]) -> Done:
        """Give every reservation back; an unknown or finished one is skipped (durable)."""
        items = await self._items(lines)
        now = self.clock()
        for line in lines:
            items[line.sku].release(line.rid, now)
        await self._durable(list(items.values()), [])
        return Done(len(lines))

    async def return_many(self, lines: tuple[LineHold, ...]) -> Done | Rejected:
        """Put sold units back once per rid (an order cancelled after confirmation), durably."""
        items = await self._items(lines)
        now, events = self.clock(), []
        for line in lines:
            result = items[line.sku].return_units(
                line.rid, line.quantity, now, self.settings.low_stock_threshold
            )
            if isinstance(result, Rejected):
                return result
            events.extend(result)
        await self._durable(list(items.values()), events)
        return Done(len(lines))

    async def return_units(self, sku: str, rid: str, quantity: int) -> StockView | Rejected:
        """Put sold units back once per ``rid`` (order cancellation), durably."""
        item = await self.state(sku)
        return await self._answer(
            item, item.return_units(rid, quantity, self.clock(), self.settings.low_stock_threshold)
        )

    async def set_on_hand(self, sku: str, on_hand: int) -> StockView | Rejected:
        """Set on-hand stock (not below what is reserved)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.set_on_hand(on_hand, self.clock(), self.settings.low_stock_threshold)
        )

    async def adjust(self, sku: str, delta: int, reason: str) -> StockView | Rejected:
        """Add or remove stock with a reason (not below what is reserved)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.adjust(delta, reason, self.clock(), self.settings.low_stock_threshold)
        )

    async def audit(self, sku: str) -> Audit:
        """Invariant inputs: on hand, live reservations and units committed so far."""
        item = await self.state(sku)
        now = self.clock()
        return Audit(
            on_hand=item.on_hand,
            committed_units=item.committed_units,
            reserved=item.reserved(now),
            live={rid: r.quantity for rid, r in item.reservations.items() if r.expires_ms > now},
        )


InventoryShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(InventoryShardImpl)  # type: ignore[call-overload]
