"""Carts: the pure ``Cart`` state (lines, quantity rules, subtotal) and the ``CartShard`` actor.

A shard owns many carts in memory, applies commands to them, and hands dirty
carts and their events to the write-behind flusher. Cart edits are
fire-and-forget: answered at once, persisted within ``flush_interval_ms``.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.cart.model import Cart, CartRules
from actors.messages import Rejected
from actors.shard import EnvFactory, ShardEnv, ShardShell
from streams.events import (
    Envelope,
)


class CartShardImpl(ShardShell[Cart]):
    """Owns many carts; every public method is one protocol message."""

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)
        self.rules = CartRules(self.settings.cart_max_lines, self.settings.cart_max_quantity)

    def new_state(self, key: str) -> Cart:
        return Cart(key)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> Cart:
        return Cart.from_doc(key, doc, version)

    def _apply(self, cart: Cart, result: list[Envelope] | Rejected) -> dict[str, Any]:
        if isinstance(result, Rejected):
            return {"ok": False, "code": result.code, "detail": result.detail, "cart": cart.view()}
        self.changed(cart.cart_id, cart, result)
        return {"ok": True, "cart": cart.view()}

    async def get(self, cart_id: str) -> dict[str, Any]:
        """The cart's current view."""
        return (await self.state(cart_id)).view()

    async def add_item(
        self, cart_id: str, sku: str, name: str, unit_price: int, quantity: int
    ) -> dict[str, Any]:
        """Add ``quantity`` of a product (price and name snapshot taken by the caller)."""
        cart = await self.state(cart_id)
        return self._apply(
            cart, cart.add(sku, name, unit_price, quantity, self.clock(), self.rules)
        )

    async def set_quantity(self, cart_id: str, sku: str, quantity: int) -> dict[str, Any]:
        """Set a line's quantity; 0 removes the line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.set_quantity(sku, quantity, self.clock(), self.rules))

    async def remove_item(self, cart_id: str, sku: str) -> dict[str, Any]:
        """Remove a line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.remove(sku, self.clock()))

    async def merge_into(self, cart_id: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        """Add another cart's lines (login merges the anonymous cart); limits still apply."""
        cart = await self.state(cart_id)
        events = cart.merge(lines, self.clock(), self.rules)
        if events:
            self.changed(cart_id, cart, events)
        await self.flusher.durable(cart_id, cart.version)
        return cart.view()

    async def clear(self, cart_id: str) -> dict[str, Any]:
        """Empty the cart (after a merge, an order, or an erasure), durably."""
        cart = await self.state(cart_id)
        events = cart.clear(self.clock())
        if events:
            self.changed(cart_id, cart, events)
        await self.flusher.durable(cart_id, cart.version)
        return cart.view()

    async def persist(self, cart_id: str) -> None:
        """Wait until the cart's current version has committed (the durable path)."""
        await self.durable(cart_id)


CartShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(CartShardImpl)  # type: ignore[call-overload]
