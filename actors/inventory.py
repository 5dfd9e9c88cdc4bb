"""Stock: the pure ``StockItem`` state (on hand, reservations with a TTL) and the
``InventoryShard`` actor.

``available = on_hand - reserved`` and it never goes negative: a reservation
that does not fit is refused, and on_hand cannot be set or adjusted below what
is reserved. Reserve, release and commit are idempotent by reservation id
(repeats answer as the first call did) and durable: answered only after the
batch holding the change has committed (group commit). Expired reservations
are released by a sweeper and ignored by reads before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.shard import ShardShell
from cluster.settings import Settings
from streams.events import INVENTORY_CHANGED, INVENTORY_LOW_STOCK, Envelope, make_event

FINISHED_KEPT = 256


@dataclass(frozen=True)
class Rejected:
    code: str  # unknown-sku | insufficient | unknown-reservation | below-reserved | invalid
    detail: str
    available: int | None = None


@dataclass
class Reservation:
    quantity: int
    expires_ms: int
    order_id: str | None = None


@dataclass
class StockItem:
    """Stock of one SKU. Commands return events, or a ``Rejected``."""

    sku: str
    on_hand: int = 0
    reservations: dict[str, Reservation] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)  # reservation id -> committed|released
    committed_units: int = 0
    known: bool = True
    version: int = 0

    def reserved(self, now_ms: int) -> int:
        return sum(r.quantity for r in self.reservations.values() if r.expires_ms > now_ms)

    def available(self, now_ms: int) -> int:
        return self.on_hand - self.reserved(now_ms)

    def reserve(
        self, rid: str, quantity: int, now_ms: int, ttl_ms: int, order_id: str | None = None
    ) -> list[Envelope] | Rejected:
        if not self.known:
            return Rejected("unknown-sku", f"{self.sku} is not a product")
        if quantity < 1:
            return Rejected("invalid", "quantity must be at least 1")
        if rid in self.reservations or self.finished.get(rid) == "committed":
            return []
        if rid in self.finished:
            return Rejected("unknown-reservation", f"reservation {rid} was already released")
        self.sweep(now_ms)
        available = self.available(now_ms)
        if quantity > available:
            return Rejected("insufficient", f"only {available} of {self.sku} left", available)
        self.reservations[rid] = Reservation(quantity, now_ms + ttl_ms, order_id)
        self.version += 1
        return []

    def release(self, rid: str, now_ms: int) -> list[Envelope] | Rejected:
        if self.reservations.pop(rid, None) is None:
            if rid in self.finished:
                return []
            return Rejected("unknown-reservation", f"no reservation {rid}")
        self._finish(rid, "released")
        self.version += 1
        return []

    def commit(self, rid: str, now_ms: int, threshold: int) -> list[Envelope] | Rejected:
        """Turn a reservation into a sale: on_hand goes down by its quantity."""
        if self.finished.get(rid) == "committed":
            return []
        reservation = self.reservations.get(rid)
        if reservation is None:
            return Rejected("unknown-reservation", f"no live reservation {rid}")
        del self.reservations[rid]
        before = self.on_hand
        self.on_hand -= reservation.quantity
        self.committed_units += reservation.quantity
        self._finish(rid, "committed")
        self.version += 1
        return self._changed(now_ms, "sale", -reservation.quantity, before, threshold)

    def return_units(
        self, rid: str, quantity: int, now_ms: int, threshold: int
    ) -> list[Envelope] | Rejected:
        """Put sold units back (a cancelled order), once per ``rid``."""
        if self.finished.get(rid) == "returned":
            return []
        if quantity < 1:
            return Rejected("invalid", "quantity must be at least 1")
        before = self.on_hand
        self.on_hand += quantity
        self.committed_units -= quantity
        self._finish(rid, "returned")
        self.version += 1
        return self._changed(now_ms, "return", quantity, before, threshold)

    def set_on_hand(self, on_hand: int, now_ms: int, threshold: int) -> list[Envelope] | Rejected:
        return self.adjust(on_hand - self.on_hand, "set", now_ms, threshold)

    def adjust(
        self, delta: int, reason: str, now_ms: int, threshold: int
    ) -> list[Envelope] | Rejected:
        if not self.known:
            return Rejected("unknown-sku", f"{self.sku} is not a product")
        self.sweep(now_ms)
        if self.on_hand + delta < self.reserved(now_ms):
            return Rejected(
                "below-reserved",
                f"on hand cannot go below the {self.reserved(now_ms)} units reserved",
                self.available(now_ms),
            )
        before = self.on_hand
        self.on_hand += delta
        self.version += 1
        return self._changed(now_ms, reason, delta, before, threshold)

    def sweep(self, now_ms: int) -> int:
        """Release expired reservations; returns how many."""
        expired = [rid for rid, r in self.reservations.items() if r.expires_ms <= now_ms]
        for rid in expired:
            del self.reservations[rid]
            self._finish(rid, "released")
        if expired:
            self.version += 1
        return len(expired)

    def _finish(self, rid: str, how: str) -> None:
        self.finished[rid] = how
        while len(self.finished) > FINISHED_KEPT:
            self.finished.pop(next(iter(self.finished)))

    def _changed(
        self, now_ms: int, reason: str, delta: int, before: int, threshold: int
    ) -> list[Envelope]:
        """``inventory.changed``; ``inventory.low_stock`` when on hand falls to the threshold."""
        available = self.available(now_ms)
        payload = {"sku": self.sku, "on_hand": self.on_hand, "available": available,
                   "delta": delta, "reason": reason}  # fmt: skip
        events = [make_event(INVENTORY_CHANGED, self.sku, payload, now_ms)]
        if self.on_hand <= threshold < before:
            events.append(
                make_event(
                    INVENTORY_LOW_STOCK, self.sku,
                    {"sku": self.sku, "on_hand": self.on_hand, "threshold": threshold}, now_ms,
                )
            )  # fmt: skip
        return events

    def view(self, now_ms: int) -> dict[str, Any]:
        reserved = self.reserved(now_ms)
        return {"sku": self.sku, "on_hand": self.on_hand, "reserved": reserved,
                "available": self.on_hand - reserved}  # fmt: skip

    def to_doc(self) -> dict[str, Any]:
        return {
            "on_hand": self.on_hand,
            "reservations": {
                rid: [r.quantity, r.expires_ms, r.order_id] for rid, r in self.reservations.items()
            },
            "finished": self.finished,
            "committed_units": self.committed_units,
        }

    @classmethod
    def from_doc(cls, sku: str, doc: dict[str, Any], version: int) -> StockItem:
        return cls(
            sku,
            int(doc["on_hand"]),
            {rid: Reservation(q, e, o) for rid, (q, e, o) in doc.get("reservations", {}).items()},
            dict(doc.get("finished", {})),
            int(doc.get("committed_units", 0)),
            True,
            version,
        )


class InventoryStore:
    """PostgreSQL adapter: the ``inventory`` row of each SKU (columns + reservations)."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        now = int(time.time() * 1000)
        await conn.execute(
            """
            INSERT INTO inventory (sku, on_hand, reserved, data, version, updated_at)
            SELECT r.sku, r.on_hand, r.reserved, r.data::jsonb, r.version, now()
            FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::bigint[])
                 AS r(sku, on_hand, reserved, data, version)
            ON CONFLICT (sku) DO UPDATE
               SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
                   data = EXCLUDED.data, version = EXCLUDED.version, updated_at = now()
             WHERE inventory.version < EXCLUDED.version
            """,
            [r[0] for r in rows],
            [r[1]["on_hand"] for r in rows],
            [_live_reserved(r[1], now) for r in rows],
            [json.dumps(r[1], separators=(",", ":")) for r in rows],
            [r[2] for r in rows],
        )

    async def load(self, conn: Any, sku: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow(
            "SELECT i.on_hand, i.data, i.version FROM products p"
            " LEFT JOIN inventory i USING (sku) WHERE p.sku = $1",
            sku,
        )
        if row is None:
            return None
        if row["on_hand"] is None:
            return {"on_hand": 0}, 0
        return {**row["data"], "on_hand": row["on_hand"]}, row["version"]


def _live_reserved(doc: dict[str, Any], now_ms: int) -> int:
    return sum(q for q, expires, _o in doc.get("reservations", {}).values() if expires > now_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


class InventoryShardImpl(ShardShell[StockItem]):
    """Owns the stock of many SKUs; every change is answered after its commit."""

    store = InventoryStore()  # type: ignore[assignment]

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        super().__init__(name, settings)
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
            now = _now_ms()
            for sku, item in list(self.states.items()):
                with contextlib.suppress(Exception):
                    if item.sweep(now):
                        self.changed(sku, item, [])

    async def _answer(self, item: StockItem, result: list[Envelope] | Rejected) -> dict[str, Any]:
        if isinstance(result, Rejected):
            return {"ok": False, "code": result.code, "detail": result.detail,
                    "available": result.available, **item.view(_now_ms())}  # fmt: skip
        self.changed(item.sku, item, result)
        await self.flusher.durable(item.sku, item.version)
        return {"ok": True, **item.view(_now_ms())}

    async def get(self, sku: str) -> dict[str, Any]:
        """On hand, reserved and available for one SKU."""
        item = await self.state(sku)
        if not item.known:
            return {"ok": False, "code": "unknown-sku", "detail": f"{sku} is not a product"}
        return {"ok": True, **item.view(_now_ms())}

    async def reserve(
        self,
        sku: str,
        rid: str,
        quantity: int,
        ttl_s: int | None = None,
        order_id: str | None = None,
    ) -> dict[str, Any]:
        """Hold ``quantity`` units under reservation ``rid`` (idempotent, durable)."""
        item = await self.state(sku)
        ttl_ms = (ttl_s or self.settings.reservation_ttl_s) * 1000
        return await self._answer(item, item.reserve(rid, quantity, _now_ms(), ttl_ms, order_id))

    async def release(self, sku: str, rid: str) -> dict[str, Any]:
        """Give reserved units back (idempotent, durable)."""
        item = await self.state(sku)
        return await self._answer(item, item.release(rid, _now_ms()))

    async def commit(self, sku: str, rid: str) -> dict[str, Any]:
        """Turn a reservation into a sale (idempotent, durable)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.commit(rid, _now_ms(), self.settings.low_stock_threshold)
        )

    async def return_units(self, sku: str, rid: str, quantity: int) -> dict[str, Any]:
        """Put sold units back once per ``rid`` (order cancellation), durably."""
        item = await self.state(sku)
        return await self._answer(
            item, item.return_units(rid, quantity, _now_ms(), self.settings.low_stock_threshold)
        )

    async def set_on_hand(self, sku: str, on_hand: int) -> dict[str, Any]:
        """Set on-hand stock (not below what is reserved)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.set_on_hand(on_hand, _now_ms(), self.settings.low_stock_threshold)
        )

    async def adjust(self, sku: str, delta: int, reason: str) -> dict[str, Any]:
        """Add or remove stock with a reason (not below what is reserved)."""
        item = await self.state(sku)
        return await self._answer(
            item, item.adjust(delta, reason, _now_ms(), self.settings.low_stock_threshold)
        )

    async def audit(self, sku: str) -> dict[str, Any]:
        """Invariant inputs: on hand, live reservations and units committed so far."""
        item = await self.state(sku)
        now = _now_ms()
        return {
            "on_hand": item.on_hand,
            "committed_units": item.committed_units,
            "reserved": item.reserved(now),
            "live": {rid: r.quantity for rid, r in item.reservations.items() if r.expires_ms > now},
        }


InventoryShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(InventoryShardImpl)  # type: ignore[call-overload]
