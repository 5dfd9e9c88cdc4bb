"""Carts: the pure ``Cart`` state (lines, quantity rules, subtotal) and the ``CartShard`` actor.

A shard owns many carts in memory, applies commands to them, and hands dirty
carts and their events to the write-behind flusher. Cart edits are
fire-and-forget: answered at once, persisted within ``flush_interval_ms``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.shard import DocumentStore, ShardShell
from cluster.settings import Settings
from streams.events import (
    CART_CLEARED,
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

    def merge(self, lines: list[dict[str, Any]], now_ms: int, rules: CartRules) -> list[Envelope]:
        """Add each line as far as the rules allow; lines that do not fit are dropped."""
        events: list[Envelope] = []
        for line in lines:
            result = self.add(
                line["sku"], line["name"], int(line["unit_price"]), int(line["quantity"]),
                now_ms, rules,
            )  # fmt: skip
            if isinstance(result, Rejected) and result.code == "quantity-limit":
                have = self.lines[line["sku"]].quantity
                result = self.add(
                    line["sku"], line["name"], int(line["unit_price"]),
                    rules.max_quantity - have, now_ms, rules,
                )  # fmt: skip
            if not isinstance(result, Rejected):
                events += result
        return events

    def clear(self, now_ms: int) -> list[Envelope]:
        if not self.lines:
            return []
        self.lines.clear()
        return self._changed(
            now_ms, make_event(CART_CLEARED, self.cart_id, {"cart_id": self.cart_id}, now_ms)
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


def _now_ms() -> int:
    return int(time.time() * 1000)


class CartShardImpl(ShardShell[Cart]):
    """Owns many carts; every public method is one protocol message."""

    store = DocumentStore("carts", "cart_id")

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        super().__init__(name, settings)
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
        return self._apply(cart, cart.add(sku, name, unit_price, quantity, _now_ms(), self.rules))

    async def set_quantity(self, cart_id: str, sku: str, quantity: int) -> dict[str, Any]:
        """Set a line's quantity; 0 removes the line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.set_quantity(sku, quantity, _now_ms(), self.rules))

    async def remove_item(self, cart_id: str, sku: str) -> dict[str, Any]:
        """Remove a line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.remove(sku, _now_ms()))

    async def merge_into(self, cart_id: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        """Add another cart's lines (login merges the anonymous cart); limits still apply."""
        cart = await self.state(cart_id)
        events = cart.merge(lines, _now_ms(), self.rules)
        if events:
            self.changed(cart_id, cart, events)
        await self.flusher.durable(cart_id, cart.version)
        return cart.view()

    async def clear(self, cart_id: str) -> dict[str, Any]:
        """Empty the cart (after a merge, an order, or an erasure), durably."""
        cart = await self.state(cart_id)
        events = cart.clear(_now_ms())
        if events:
            self.changed(cart_id, cart, events)
        await self.flusher.durable(cart_id, cart.version)
        return cart.view()

    async def persist(self, cart_id: str) -> None:
        """Wait until the cart's current version has committed (the durable path)."""
        await self.durable(cart_id)


CartShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(CartShardImpl)  # type: ignore[call-overload]
