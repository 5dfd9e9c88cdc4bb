"""Carts: the pure ``Cart`` state (lines, quantity rules, subtotal) and the ``CartShard`` actor.

A shard owns many carts in memory, applies commands to them, and hands dirty
carts and their events to the write-behind flusher. Cart edits are
fire-and-forget: answered at once, persisted within ``flush_interval_ms``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.writebehind import DirtyTracker, Flusher
from cluster.settings import Settings, get_settings
from streams.events import (
    CART_ITEM_ADDED,
    CART_ITEM_QUANTITY_SET,
    CART_ITEM_REMOVED,
    Envelope,
    make_event,
)


@dataclass(frozen=True)
class Rejected:
    """A command the cart refused; ``code`` is stable, ``detail`` is for people."""

    code: str
    detail: str


@dataclass(frozen=True)
class CartRules:
    max_lines: int = 50
    max_quantity: int = 99


@dataclass
class CartLine:
    sku: str
    name: str
    unit_price: int
    quantity: int

    @property
    def line_total(self) -> int:
        return self.unit_price * self.quantity


@dataclass
class Cart:
    """One cart. Commands return the events they produced, or a ``Rejected``."""

    cart_id: str
    lines: dict[str, CartLine] = field(default_factory=dict)
    version: int = 0
    updated_at_ms: int = 0

    @property
    def subtotal(self) -> int:
        return sum(line.line_total for line in self.lines.values())

    def add(
        self, sku: str, name: str, unit_price: int, quantity: int, now_ms: int, rules: CartRules
    ) -> list[Envelope] | Rejected:
        if quantity < 1:
            return Rejected("invalid-quantity", "quantity must be at least 1")
        if unit_price <= 0:
            return Rejected("invalid-price", "unit price must be positive")
        line = self.lines.get(sku)
        new_quantity = quantity + (line.quantity if line else 0)
        if new_quantity > rules.max_quantity:
            return Rejected(
                "quantity-limit", f"at most {rules.max_quantity} units of one product per cart"
            )
        if line is None and len(self.lines) >= rules.max_lines:
            return Rejected("cart-full", f"a cart holds at most {rules.max_lines} products")
        if line is None:
            self.lines[sku] = CartLine(sku, name, unit_price, quantity)
        else:
            line.quantity = new_quantity
        return self._changed(
            now_ms,
            make_event(
                CART_ITEM_ADDED,
                self.cart_id,
                {"cart_id": self.cart_id, "sku": sku, "quantity": quantity,
                 "line_quantity": new_quantity, "unit_price": unit_price},
                now_ms,
            ),
        )  # fmt: skip

    def set_quantity(
        self, sku: str, quantity: int, now_ms: int, rules: CartRules
    ) -> list[Envelope] | Rejected:
        if quantity == 0:
            return self.remove(sku, now_ms)
        if quantity < 0:
            return Rejected("invalid-quantity", "quantity must be 0 or more")
        if quantity > rules.max_quantity:
            return Rejected(
                "quantity-limit", f"at most {rules.max_quantity} units of one product per cart"
            )
        line = self.lines.get(sku)
        if line is None:
            return Rejected("not-in-cart", f"{sku} is not in the cart")
        line.quantity = quantity
        return self._changed(
            now_ms,
            make_event(
                CART_ITEM_QUANTITY_SET,
                self.cart_id,
                {"cart_id": self.cart_id, "sku": sku, "quantity": quantity},
                now_ms,
            ),
        )

    def remove(self, sku: str, now_ms: int) -> list[Envelope] | Rejected:
        if self.lines.pop(sku, None) is None:
            return Rejected("not-in-cart", f"{sku} is not in the cart")
        return self._changed(
            now_ms,
            make_event(
                CART_ITEM_REMOVED, self.cart_id, {"cart_id": self.cart_id, "sku": sku}, now_ms
            ),
        )

    def _changed(self, now_ms: int, event: Envelope) -> list[Envelope]:
        self.version += 1
        self.updated_at_ms = now_ms
        return [event]

    def to_doc(self) -> dict[str, Any]:
        return {
            "lines": [
                {"sku": x.sku, "name": x.name, "unit_price": x.unit_price, "quantity": x.quantity}
                for x in self.lines.values()
            ],
            "updated_at_ms": self.updated_at_ms,
        }

    @classmethod
    def from_doc(cls, cart_id: str, doc: dict[str, Any], version: int) -> Cart:
        lines = {
            x["sku"]: CartLine(x["sku"], x["name"], int(x["unit_price"]), int(x["quantity"]))
            for x in doc.get("lines", [])
        }
        return cls(cart_id, lines, version, int(doc.get("updated_at_ms", 0)))

    def view(self) -> dict[str, Any]:
        """What the API renders: lines with totals and the subtotal, in minor units."""
        return {
            "cart_id": self.cart_id,
            "version": self.version,
            "lines": [
                {"sku": x.sku, "name": x.name, "quantity": x.quantity,
                 "unit_price": x.unit_price, "line_total": x.line_total}
                for x in self.lines.values()
            ],
            "subtotal": self.subtotal,
        }  # fmt: skip


class CartStore:
    """PostgreSQL adapter for carts: versioned upserts of one JSON document per cart."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        await conn.execute(
            """
            INSERT INTO carts (cart_id, data, version, updated_at)
            SELECT r.cart_id, r.data::jsonb, r.version, now()
            FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(cart_id, data, version)
            ON CONFLICT (cart_id) DO UPDATE
               SET data = EXCLUDED.data, version = EXCLUDED.version, updated_at = now()
             WHERE carts.version < EXCLUDED.version
            """,
            [r[0] for r in rows],
            [_json(r[1]) for r in rows],
            [r[2] for r in rows],
        )

    async def load(self, conn: Any, cart_id: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow("SELECT data, version FROM carts WHERE cart_id = $1", cart_id)
        return None if row is None else (row["data"], row["version"])


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def _now_ms() -> int:
    return int(time.time() * 1000)


class CartShardImpl:
    """Owns many carts; every public method is one protocol message."""

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or get_settings()
        self.rules = CartRules(self.settings.cart_max_lines, self.settings.cart_max_quantity)
        self.carts: OrderedDict[str, Cart] = OrderedDict()
        self.store = CartStore()
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._loading: dict[str, asyncio.Future[Cart]] = {}
        self.flusher = Flusher(
            DirtyTracker(self.settings.flush_batch_size, self.settings.flush_interval_ms),
            self.store,
            self._acquire,
            self._snapshot,
        )
        self.loads = 0
        self.evictions = 0

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    from cluster.db import create_pool
                    from cluster.services import service_urls

                    self._pool = await create_pool(service_urls().database, max_size=2)
                    self.flusher.start()
        return self._pool

    def _acquire(self) -> Any:
        return self._pool.acquire()

    def _snapshot(self, cart_id: str) -> tuple[Any, int] | None:
        cart = self.carts.get(cart_id)
        return None if cart is None else (cart.to_doc(), cart.version)

    async def _cart(self, cart_id: str) -> Cart:
        cart = self.carts.get(cart_id)
        if cart is not None:
            self.carts.move_to_end(cart_id)
            return cart
        loading = self._loading.get(cart_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Cart] = asyncio.get_running_loop().create_future()
        self._loading[cart_id] = future
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                found = await self.store.load(conn, cart_id)
            cart = Cart(cart_id) if found is None else Cart.from_doc(cart_id, *found)
            self.loads += 1
            self.carts[cart_id] = cart
            future.set_result(cart)
            self._evict()
            return cart
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._loading[cart_id]

    def _evict(self) -> None:
        excess = len(self.carts) - self.settings.shard_max_keys
        if excess <= 0:
            return
        for cart_id in list(self.carts):
            if excess <= 0:
                break
            if not self.flusher.tracker.is_dirty(cart_id):
                del self.carts[cart_id]
                self.evictions += 1
                excess -= 1

    def _apply(self, cart: Cart, result: list[Envelope] | Rejected) -> dict[str, Any]:
        if isinstance(result, Rejected):
            return {"ok": False, "code": result.code, "detail": result.detail, "cart": cart.view()}
        self.flusher.mark(cart.cart_id, cart.version, result)
        return {"ok": True, "cart": cart.view()}

    async def get(self, cart_id: str) -> dict[str, Any]:
        """The cart's current view."""
        return (await self._cart(cart_id)).view()

    async def add_item(
        self, cart_id: str, sku: str, name: str, unit_price: int, quantity: int
    ) -> dict[str, Any]:
        """Add ``quantity`` of a product (price and name snapshot taken by the caller)."""
        cart = await self._cart(cart_id)
        return self._apply(cart, cart.add(sku, name, unit_price, quantity, _now_ms(), self.rules))

    async def set_quantity(self, cart_id: str, sku: str, quantity: int) -> dict[str, Any]:
        """Set a line's quantity; 0 removes the line."""
        cart = await self._cart(cart_id)
        return self._apply(cart, cart.set_quantity(sku, quantity, _now_ms(), self.rules))

    async def remove_item(self, cart_id: str, sku: str) -> dict[str, Any]:
        """Remove a line."""
        cart = await self._cart(cart_id)
        return self._apply(cart, cart.remove(sku, _now_ms()))

    async def persist(self, cart_id: str) -> None:
        """Wait until the cart's current version has committed (the durable path)."""
        cart = await self._cart(cart_id)
        await self.flusher.durable(cart_id, cart.version)

    async def drain(self) -> int:
        """Final flush before a graceful stop."""
        if self._pool is None:
            return 0
        return await self.flusher.drain()

    async def stats(self) -> dict[str, Any]:
        """Metrics: resident carts, loads, evictions, flush lag and batch sizes."""
        return {
            "name": self.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "resident": len(self.carts),
            "loads": self.loads,
            "evictions": self.evictions,
            **self.flusher.stats(),
        }

    async def ping(self) -> str:
        """Liveness probe; also opens the database pool so the flusher runs."""
        await self._get_pool()
        return self.name


CartShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(CartShardImpl)  # type: ignore[call-overload]
