"""Typed clients of the shard actors: the only callers of ``.remote(`` on a shard.

Callers (API routes, the order saga's port adapters, the CLI) hold a
``Directory`` and call these methods; each routes the key to its shard, makes
one Ray call, and returns the shard's typed reply (frozen values, or the one
``actors.messages.Rejected``). Nobody else computes shard names or calls
``.remote(`` on a shard handle.

Carts, sessions, inventory and orders move between shards live (``agora scale``):
their calls go through ``_routed`` (inventory's many-line calls through
``InventoryClient._per_shard``), which follows a shard's ``Rejected("moved")`` to
the newer ring and retries on the new owner; no caller ever sees that rejection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from actors.cart.model import CartView, CartViewLine
from actors.directory import RingSpec
from actors.inventory.model import Audit, Done, Held, LineHold, Short, StockView
from actors.messages import MOVED, Rejected
from actors.order.model import OrderReply, PixSettled
from streams.tracing import carrier as trace_carrier


def _call(handle: Any, method: str, *args: Any) -> Any:
    """``handle.<method>.remote(*args)``, carrying the current trace when one is sampled.

    Ray propagates no OpenTelemetry context, so a traced call goes through the
    shell's ``traced`` entry with a W3C carrier; untraced, it is the plain call.
    """
    carrier = trace_carrier()
    if carrier is None:
        return getattr(handle, method).remote(*args)
    return handle.traced.remote(carrier, method, *args)


# "Moved" answers are followed for up to MOVED_BUDGET_S (as long as a gained key waits
# for its handoff on the new owner): a newer ring named in the answer is tried at once;
# a shard still on the older ring (the rescale has not reached it yet; under load its
# ``adopt_ring`` can queue for a while) is retried after a short, growing pause.
MOVED_BUDGET_S = 5.0
MOVED_PAUSE_S = 0.02
MOVED_PAUSE_MAX_S = 0.5


class ShardMoved(RuntimeError):
    """A key kept being refused as moved: the rescale did not finish in time."""


class _Following:
    """One caller's budget for following "moved" answers (time, not a count of tries)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.deadline = time.monotonic() + MOVED_BUDGET_S
        self.pauses = 0

    async def pause(self) -> None:
        """Wait before asking again; ``ShardMoved`` once the budget is spent."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ShardMoved(f"{self.what}: still moving after {MOVED_BUDGET_S:.0f} s")
        await asyncio.sleep(min(MOVED_PAUSE_S * 2**self.pauses, MOVED_PAUSE_MAX_S, left))
        self.pauses += 1


async def _routed(directory: Any, kind: str, key: str, method: str, *args: Any) -> Any:
    """``method(key, *args)`` on the shard owning ``key``, following "moved" answers."""
    carrier = trace_carrier()
    following = _Following(f"{kind} {key}")
    while True:
        handle = directory.get(kind, key)
        if carrier is None:
            reply = await handle.call.remote(method, key, *args)
        else:
            reply = await handle.traced.remote(carrier, method, key, *args)
        if not (isinstance(reply, Rejected) and reply.code == MOVED):
            return reply
        if reply.ring is None or not directory.adopt(kind, *reply.ring):
            await following.pause()


class _Client:
    def __init__(self, directory: Any) -> None:
        self.directory = directory


class CartClient(_Client):
    """Carts: lines, coupon, merge on login, clear after an order."""

    async def get(self, cart_id: str) -> CartView:
        return cast(CartView, await _routed(self.directory, "cart", cart_id, "view"))

    async def add_item(
        self, cart_id: str, sku: str, name: str, unit_price: int, quantity: int
    ) -> CartView | Rejected:
        reply = await _routed(
            self.directory, "cart", cart_id, "add_item", sku, name, unit_price, quantity
        )
        return cast(CartView | Rejected, reply)

    async def set_quantity(self, cart_id: str, sku: str, quantity: int) -> CartView | Rejected:
        reply = await _routed(self.directory, "cart", cart_id, "set_quantity", sku, quantity)
        return cast(CartView | Rejected, reply)

    async def remove_item(self, cart_id: str, sku: str) -> CartView | Rejected:
        reply = await _routed(self.directory, "cart", cart_id, "remove_item", sku)
        return cast(CartView | Rejected, reply)

    async def apply_coupon(self, cart_id: str, code: str) -> CartView | Rejected:
        reply = await _routed(self.directory, "cart", cart_id, "apply_coupon", code)
        return cast(CartView | Rejected, reply)

    async def remove_coupon(self, cart_id: str) -> CartView:
        return cast(CartView, await _routed(self.directory, "cart", cart_id, "remove_coupon"))

    async def absorb(
        self, cart_id: str, lines: tuple[CartViewLine, ...], coupon: str | None
    ) -> CartView:
        """Login merge, one command on the receiving cart's shard (durable when answered)."""
        reply = await _routed(self.directory, "cart", cart_id, "absorb", lines, coupon)
        return cast(CartView, reply)

    async def clear(self, cart_id: str) -> CartView:
        """Empty the cart (lines and coupon), durably."""
        return cast(CartView, await _routed(self.directory, "cart", cart_id, "clear"))

    async def persist(self, cart_id: str) -> None:
        await _routed(self.directory, "cart", cart_id, "persist")


class InventoryClient(_Client):
    """Stock: reservations (one call per shard for many lines), commits, releases, admin.

    SKUs move between shards live (``agora scale inventory=N``). A single-SKU call goes
    through ``_routed``. A many-line call (``_per_shard``) sends each shard involved its
    lines in one call; a shard that answers "moved" has changed none of them (it checks
    that it owns all of its lines at once, ``InventoryShardImpl._items``), so those lines
    are grouped again on the newer ring and sent again: every command is idempotent per
    reservation id, and a hold made on the old owner is in the row the new owner loads.
    """

    def _by_shard(self, lines: tuple[LineHold, ...]) -> dict[str, tuple[LineHold, ...]]:
        groups: dict[str, list[LineHold]] = {}
        for line in lines:
            groups.setdefault(self.directory.shard_for("inventory", line.sku), []).append(line)
        return {name: tuple(group) for name, group in groups.items()}

    async def _per_shard(
        self, method: str, lines: tuple[LineHold, ...], *args: Any, order_id: str | None = None
    ) -> list[Any]:
        """``method([order_id,] group, *args)`` on every shard owning some of ``lines``, in
        parallel; the replies of the shards that did it (one per shard, any order).

        A group answered "moved" (nothing done on that shard) goes again, regrouped on the
        ring the answer names; when no answer names a newer ring (a shard still on the
        older one), after a short, growing pause, as ``_routed`` does.
        """
        carrier = trace_carrier()
        head = () if order_id is None else (order_id,)
        replies: list[Any] = []
        pending = lines
        following = _Following("inventory")
        while True:
            epoch = self.directory.epoch("inventory")
            groups = self._by_shard(pending)
            calls = []
            for name, group in groups.items():
                handle = self.directory.handle(name)
                if carrier is None:
                    calls.append(handle.call.remote(method, *head, group, *args))
                else:
                    calls.append(handle.traced.remote(carrier, method, *head, group, *args))
            pending = ()
            for group, reply in zip(groups.values(), await asyncio.gather(*calls), strict=True):
                if isinstance(reply, Rejected) and reply.code == MOVED:
                    pending += group
                    if reply.ring is not None:
                        self.directory.adopt("inventory", *reply.ring)
                else:
                    replies.append(reply)
            if not pending:
                return replies
            if self.directory.epoch("inventory") == epoch:
                following.what = "inventory " + ", ".join(sorted({line.sku for line in pending}))
                await following.pause()

    async def get(self, sku: str) -> StockView | Rejected:
        return cast(StockView | Rejected, await _routed(self.directory, "inventory", sku, "get"))

    async def set_on_hand(self, sku: str, on_hand: int) -> StockView | Rejected:
        reply = await _routed(self.directory, "inventory", sku, "set_on_hand", on_hand)
        return cast(StockView | Rejected, reply)

    async def adjust(self, sku: str, delta: int, reason: str) -> StockView | Rejected:
        reply = await _routed(self.directory, "inventory", sku, "adjust", delta, reason)
        return cast(StockView | Rejected, reply)

    async def reserve(
        self, sku: str, rid: str, quantity: int, ttl_s: int | None = None
    ) -> StockView | Rejected:
        reply = await _routed(self.directory, "inventory", sku, "reserve", rid, quantity, ttl_s)
        return cast(StockView | Rejected, reply)

    async def commit(self, sku: str, rid: str) -> StockView | Rejected:
        reply = await _routed(self.directory, "inventory", sku, "commit", rid)
        return cast(StockView | Rejected, reply)

    async def release(self, sku: str, rid: str) -> StockView | Rejected:
        reply = await _routed(self.directory, "inventory", sku, "release", rid)
        return cast(StockView | Rejected, reply)

    async def audit(self, sku: str) -> Audit:
        return cast(Audit, await _routed(self.directory, "inventory", sku, "audit"))

    async def reserve_many(
        self, order_id: str, lines: tuple[LineHold, ...], ttl_s: int | None = None
    ) -> list[Held | Short]:
        """One call per inventory shard involved, in parallel; each shard all-or-nothing."""
        replies = await self._per_shard("reserve_many", lines, ttl_s, order_id=order_id)
        return cast(list[Held | Short], replies)

    async def commit_many(self, lines: tuple[LineHold, ...]) -> list[Done | Rejected]:
        return cast(list[Done | Rejected], await self._per_shard("commit_many", lines))

    async def release_many(self, lines: tuple[LineHold, ...]) -> list[Done]:
        return cast(list[Done], await self._per_shard("release_many", lines))

    async def return_many(self, lines: tuple[LineHold, ...]) -> list[Done | Rejected]:
        return cast(list[Done | Rejected], await self._per_shard("return_many", lines))


class SessionClient(_Client):
    """Refresh-token families and sessions of a user."""

    async def open(
        self, user_id: str, sid: str, refresh_hash: str, device: str, lifetime_ms: int
    ) -> None:
        await _routed(
            self.directory, "session", user_id, "open", sid, refresh_hash, device, lifetime_ms
        )

    async def rotate(
        self, user_id: str, sid: str, presented_hash: str, new_hash: str
    ) -> Rejected | None:
        reply = await _routed(
            self.directory, "session", user_id, "rotate", sid, presented_hash, new_hash
        )
        return cast(Rejected | None, reply)

    async def revoke(self, user_id: str, sid: str, reason: str) -> bool:
        return cast(bool, await _routed(self.directory, "session", user_id, "revoke", sid, reason))

    async def revoke_all(self, user_id: str, reason: str) -> list[str]:
        return cast(
            list[str], await _routed(self.directory, "session", user_id, "revoke_all", reason)
        )

    async def erase(self, user_id: str) -> None:
        await _routed(self.directory, "session", user_id, "erase")

    async def active(self, user_id: str) -> list[dict[str, Any]]:
        """The user's active sessions (no token material)."""
        return cast(list[dict[str, Any]], await _routed(self.directory, "session", user_id, "list"))

    async def is_active(self, user_id: str, sid: str) -> bool:
        return cast(bool, await _routed(self.directory, "session", user_id, "is_active", sid))


class OrderClient(_Client):
    """Checkout sagas and order reads and operations.

    Orders move between shards live (``agora scale order=N``): every call goes through
    ``_routed``. A caller waiting on a saga whose order is handed over meanwhile is
    answered "moved" once the saga stopped at a step boundary on the old owner, and asks
    the new owner, which resumes the saga from its persisted step and answers; each call
    is safe to repeat (the order id is the checkout's idempotency key, operations are
    idempotent once done).
    """

    async def checkout(
        self, order_id: str, user_id: str, request_hash: str, request: dict[str, Any], cart_id: str
    ) -> OrderReply | Rejected:
        """Start (or join, or replay) the saga; answers within ``checkout_wait_s``."""
        reply = await _routed(
            self.directory, "order", order_id, "checkout", user_id, request_hash, request, cart_id
        )
        return cast(OrderReply | Rejected, reply)

    async def get(self, order_id: str) -> OrderReply | None:
        return cast(OrderReply | None, await _routed(self.directory, "order", order_id, "get"))

    async def cancel(self, order_id: str, user_id: str) -> OrderReply | Rejected:
        reply = await _routed(self.directory, "order", order_id, "cancel", user_id)
        return cast(OrderReply | Rejected, reply)

    async def operate(
        self, order_id: str, action: str, note: str | None = None
    ) -> OrderReply | Rejected:
        reply = await _routed(self.directory, "order", order_id, "operate", action, note)
        return cast(OrderReply | Rejected, reply)

    async def pix_paid(self, order_id: str, amount: int) -> PixSettled | Rejected:
        reply = await _routed(self.directory, "order", order_id, "pix_paid", amount)
        return cast(PixSettled | Rejected, reply)

    async def erase_personal(self, order_id: str) -> None:
        await _routed(self.directory, "order", order_id, "erase_personal")


class ShardOps(_Client):
    """Any kind's shards as a whole: liveness and flush metrics (health, metrics, admin)."""

    async def ping(self, kind: str) -> list[str]:
        """Every shard of ``kind`` answers (and opens its pool); their names."""
        handles = self.directory.all_handles(kind)
        return list(await asyncio.gather(*(h.ping.remote() for h in handles)))

    async def stats(self, name: str) -> dict[str, Any]:
        """One shard's metrics: name, node, pid, resident keys, loads, flush figures."""
        return cast(dict[str, Any], await _call(self.directory.handle(name), "stats"))

    async def stats_of(self, kind: str) -> list[dict[str, Any]]:
        """The metrics of every shard of ``kind``, fetched in parallel."""
        names = self.directory.shard_names(kind)
        return list(await asyncio.gather(*(self.stats(name) for name in names)))

    async def ping_all(self, kinds: tuple[str, ...]) -> list[str]:
        """Every shard of every kind answers; created (detached) where missing."""
        return [name for kind in kinds for name in await self.ping(kind)]

    async def adopt_ring(self, names: list[str], spec: RingSpec) -> list[dict[str, Any]]:
        """Every named shard follows ``spec`` (each answers once its leaving keys flushed)."""
        handles = [self.directory.handle(name) for name in names]
        calls = [h.adopt_ring.remote(spec.epoch, spec.shards, spec.previous) for h in handles]
        return list(await asyncio.gather(*calls))

    async def ping_shards(self, names: list[str]) -> list[str]:
        """The named shards answer (created, detached, where missing; pools opened)."""
        handles = [self.directory.handle(name) for name in names]
        return list(await asyncio.gather(*(h.ping.remote() for h in handles)))

    async def drain_shards(self, names: list[str]) -> int:
        """Final flush of the named shards (those a rescale left empty); the rows written."""
        handles = [self.directory.handle(name) for name in names]
        return sum(await asyncio.gather(*(h.drain.remote() for h in handles)))

    async def drain_all(self, kinds: tuple[str, ...]) -> int:
        """Final flush of every shard of every kind; the rows written."""
        handles = [h for kind in kinds for h in self.directory.all_handles(kind)]
        return sum(await asyncio.gather(*(h.drain.remote() for h in handles)))
