"""Carts: the pure ``Cart`` state (lines, quantity rules, subtotal) and the ``CartShard`` actor.

A shard owns many carts in memory, applies commands to them, and hands dirty
carts and their events to the write-behind flusher. Cart edits are
fire-and-forget: answered at once, persisted within ``flush_interval_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.messages import Rejected
from streams.events import (
    CART_CLEARED,
    CART_ITEM_ADDED,
    CART_ITEM_QUANTITY_SET,
    CART_ITEM_REMOVED,
    Envelope,
    make_event,
)


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
