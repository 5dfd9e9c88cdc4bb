"""Carts: the pure ``Cart`` state (lines, quantity rules, subtotal, its coupon code).

A cart owns everything that is the shopper's choice: lines (name and price
snapshotted when added) and the coupon code. Whether the coupon *applies* is
pricing's decision, made where the cart is shown and again at checkout.
Commands return their events or a ``Rejected``; replies are ``CartView`` values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.messages import Rejected
from streams.events import (
    CART_ABSORBED,
    CART_CLEARED,
    CART_COUPON_APPLIED,
    CART_COUPON_REMOVED,
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


_COUPON_CODE = re.compile(r"[A-Z0-9_-]{1,64}")


def user_cart_id(user_id: str) -> str:
    """The id of a signed-in shopper's cart (anonymous carts have token-derived ids)."""
    return f"user:{user_id}"


@dataclass(frozen=True)
class CartViewLine:
    sku: str
    name: str
    quantity: int
    unit_price: int
    line_total: int


@dataclass(frozen=True)
class CartView:
    """A cart as the shard answers it: lines in the order added, subtotal, coupon code."""

    cart_id: str
    version: int
    lines: tuple[CartViewLine, ...]
    subtotal: int
    coupon: str | None = None


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
    coupon: str | None = None

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
                {
                    "cart_id": self.cart_id,
                    "sku": sku,
                    "quantity": quantity,
                    "line_quantity": new_quantity,
                    "unit_price": unit_price,
                },
                now_ms,
            ),
        )

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

    def absorb(
        self,
        lines: Sequence[CartViewLine | CartLine],
        coupon: str | None,
        now_ms: int,
        rules: CartRules,
    ) -> list[Envelope]:
        """Login: take another cart's lines as far as the rules allow, and its coupon unless
        this cart has one. Lines that do not fit are dropped (or capped at the limit)."""
        taken: list[dict[str, Any]] = []
        for line in lines:
            have = self.lines[line.sku].quantity if line.sku in self.lines else 0
            quantity = min(line.quantity, rules.max_quantity - have)
            if quantity < 1 or line.unit_price <= 0:
                continue
            if line.sku not in self.lines and len(self.lines) >= rules.max_lines:
                continue
            if line.sku in self.lines:
                self.lines[line.sku].quantity = have + quantity
            else:
                self.lines[line.sku] = CartLine(line.sku, line.name, line.unit_price, quantity)
            taken.append({"sku": line.sku, "quantity": quantity})
        took_coupon = coupon is not None and self.coupon is None
        if took_coupon:
            self.coupon = coupon
        if not taken and not took_coupon:
            return []
        payload = {
            "cart_id": self.cart_id,
            "lines": taken,
            "coupon": coupon if took_coupon else None,
        }
        return self._changed(now_ms, make_event(CART_ABSORBED, self.cart_id, payload, now_ms))

    def apply_coupon(self, code: str, now_ms: int) -> list[Envelope] | Rejected:
        """Hold ``code`` (case-insensitive), replacing any earlier one; pricing decides if it
        applies, so the caller checks it first."""
        key = code.strip().upper()
        if not _COUPON_CODE.fullmatch(key):
            return Rejected("invalid-coupon-code", "a coupon code is 1-64 letters, digits, - or _")
        if key == self.coupon:
            return []
        self.coupon = key
        payload = {"cart_id": self.cart_id, "code": key}
        return self._changed(now_ms, make_event(CART_COUPON_APPLIED, self.cart_id, payload, now_ms))

    def remove_coupon(self, now_ms: int) -> list[Envelope]:
        """Forget the coupon (nothing happens when the cart has none)."""
        if self.coupon is None:
            return []
        payload = {"cart_id": self.cart_id, "code": self.coupon}
        self.coupon = None
        return self._changed(now_ms, make_event(CART_COUPON_REMOVED, self.cart_id, payload, now_ms))

    def clear(self, now_ms: int) -> list[Envelope]:
        """Empty the cart: lines and coupon (after an order, a login merge, an erasure)."""
        if not self.lines and self.coupon is None:
            return []
        self.lines.clear()
        self.coupon = None
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
            "coupon": self.coupon,
        }

    @classmethod
    def from_doc(cls, cart_id: str, doc: dict[str, Any], version: int) -> Cart:
        lines = {
            x["sku"]: CartLine(x["sku"], x["name"], int(x["unit_price"]), int(x["quantity"]))
            for x in doc.get("lines", [])
        }
        coupon = doc.get("coupon")
        return cls(
            cart_id,
            lines,
            version,
            int(doc.get("updated_at_ms", 0)),
            None if coupon is None else str(coupon),
        )

    def view(self) -> CartView:
        """The reply of every command: lines with totals, the subtotal and the coupon code."""
        lines = tuple(
            CartViewLine(x.sku, x.name, x.quantity, x.unit_price, x.line_total)
            for x in self.lines.values()
        )
        return CartView(self.cart_id, self.version, lines, self.subtotal, self.coupon)
