"""The ``CartShard`` actor: a thin shell owning many carts in memory.

Each public method is one protocol message: it applies one command of the pure
``Cart`` and answers a ``CartView`` (or the one ``Rejected``). Dirty carts and
their events go to the write-behind flusher: edits are answered at once and
persisted within ``flush_interval_ms``; ``absorb`` and ``clear`` answer only
once durable. Callers use ``actors.clients.CartClient``.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.cart.model import Cart, CartRules, CartView, CartViewLine
from actors.messages import Rejected
from actors.shard import EnvFactory, ShardEnv, ShardShell
from streams.events import Envelope


class CartShardImpl(ShardShell[Cart]):
    """Owns many carts; every public method is one protocol message."""

    movable = True  # ``agora scale``: a live rescale hands its keys over (actors.shard)

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)
        self.rules = CartRules(self.settings.cart_max_lines, self.settings.cart_max_quantity)

    def new_state(self, key: str) -> Cart:
        return Cart(key)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> Cart:
        return Cart.from_doc(key, doc, version)

    def _apply(self, cart: Cart, result: list[Envelope] | Rejected) -> CartView | Rejected:
        if isinstance(result, Rejected):
            return result
        if result:
            self.changed(cart.cart_id, cart, result)
        return cart.view()

    async def view(self, cart_id: str) -> CartView:
        """The cart's current view."""
        return (await self.state(cart_id)).view()

    async def add_item(
        self, cart_id: str, sku: str, name: str, unit_price: int, quantity: int
    ) -> CartView | Rejected:
        """Add ``quantity`` of a product (price and name snapshot taken by the caller)."""
        cart = await self.state(cart_id)
        return self._apply(
            cart, cart.add(sku, name, unit_price, quantity, self.clock(), self.rules)
        )

    async def set_quantity(self, cart_id: str, sku: str, quantity: int) -> CartView | Rejected:
        """Set a line's quantity; 0 removes the line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.set_quantity(sku, quantity, self.clock(), self.rules))

    async def remove_item(self, cart_id: str, sku: str) -> CartView | Rejected:
        """Remove a line."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.remove(sku, self.clock()))

    async def apply_coupon(self, cart_id: str, code: str) -> CartView | Rejected:
        """Hold a coupon code (the caller has checked that it applies)."""
        cart = await self.state(cart_id)
        return self._apply(cart, cart.apply_coupon(code, self.clock()))

    async def remove_coupon(self, cart_id: str) -> CartView:
        """Forget the coupon."""
        cart = await self.state(cart_id)
        reply = self._apply(cart, cart.remove_coupon(self.clock()))
        assert not isinstance(reply, Rejected)
        return reply

    async def absorb(
        self, cart_id: str, lines: tuple[CartViewLine, ...], coupon: str | None
    ) -> CartView:
        """Login: another cart's lines (as far as the rules allow) and its coupon (unless this
        cart has one), in one step; answered once durable."""
        cart = await self.state(cart_id)
        events = cart.absorb(lines, coupon, self.clock(), self.rules)
        if events:
            self.changed(cart_id, cart, events)
        await self.flusher.durable(cart_id, cart.version)
        return cart.view()

    async def clear(self, cart_id: str) -> CartView:
        """Empty the cart, lines and coupon (after a merge, an order, an erasure), durably."""
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
