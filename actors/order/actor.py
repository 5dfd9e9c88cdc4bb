"""Orders and the checkout saga: the pure ``Order`` state and the ``OrderShard`` actor.

Steps, each persisted (answered after its commit) before the next:
``created`` -> ``priced`` (cart snapshot, server-side pricing) -> ``screened``
(fraud) -> ``reserved`` (stock on every inventory shard involved) -> ``charged``
(payment; the order id is the payment's idempotency key) -> ``done``
(reservations committed, cart cleared). A failure runs the compensations of the
steps already done (release stock; a charge is never left without an order)
and ends in ``failed`` with a reason. A restarted shard resumes every order that
is not finished from its persisted step. The order id is derived from the user
and the ``Idempotency-Key``, so a retry reaches the same order and never charges
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from actors.order.model import FINISHED_STEPS, Order
from actors.shard import EnvFactory, ShardEnv, ShardShell
from streams.events import (
    Envelope,
)

log = logging.getLogger(__name__)


class OrderShardImpl(ShardShell[Order]):
    """Owns many orders and runs their sagas; every step is persisted before the next."""

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._resumed = False
        self._deps: Any = None

    def new_state(self, key: str) -> Order:
        return Order(key)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> Order:
        return Order.from_doc(key, doc, version)

    async def _get_pool(self) -> Any:
        pool = await super()._get_pool()
        if not self._resumed:
            self._resumed = True
            asyncio.get_running_loop().create_task(self._resume_unfinished())
        return pool

    def _dependencies(self) -> Any:
        if self._deps is None:
            from actors.order.steps import SagaDependencies

            self._deps = SagaDependencies(self.settings, self._pool)
        return self._deps

    async def _persist(self, order: Order, events: list[Envelope]) -> None:
        self.changed(order.order_id, order, events)
        await self.flusher.durable(order.order_id, order.version)

    async def _resume_unfinished(self) -> None:
        """After a (re)start, continue every unfinished saga this shard owns."""
        directory = self.env.directory
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT order_id FROM orders WHERE step NOT IN ('done', 'review')"
                )  # unfinished sagas and Pix orders waiting for payment
        except Exception:
            log.exception("could not list unfinished orders")
            return
        for row in rows:
            if directory.shard_for("order", row["order_id"]) == self.name:
                await self.state(row["order_id"])
                self._start(row["order_id"])
        asyncio.get_running_loop().create_task(self._expire_loop())

    async def _expire_loop(self) -> None:
        """Unpaid Pix orders expire: release their stock and fail them."""
        while True:
            await asyncio.sleep(2)
            now = self.clock()
            for order in list(self.states.values()):
                pix = (order.payment or {}).get("pix") or {}
                if order.step == "awaiting" and pix.get("expires_at", 0) * 1000 <= now:
                    with contextlib.suppress(Exception):
                        await self._dependencies().expire_pix(order)
                        await self._persist(order, order.failed(
                            "payment-expired", "The Pix charge expired unpaid.", now))  # fmt: skip

    async def pix_paid(self, order_id: str, amount: int) -> dict[str, Any]:
        """The PSP says the Pix charge was paid: record it and finish the saga."""
        order = await self.state(order_id)
        if order.step == "new":
            return {"ok": False, "code": "not-found"}
        if order.step != "awaiting":
            return {"ok": True, "code": "already-settled", "status": order.status}
        if not await self._dependencies().pix_paid(order, amount):
            return {"ok": False, "code": "amount-mismatch"}
        payment = {**(order.payment or {}), "status": "succeeded"}
        await self._persist(order, order.charged(payment, self.clock()))
        await asyncio.shield(self._start(order_id))
        return {"ok": True, "code": "paid", "status": order.status}

    def _start(self, order_id: str) -> asyncio.Task[None]:
        task = self._tasks.get(order_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run(order_id))
            self._tasks[order_id] = task
        return task

    async def checkout(
        self,
        order_id: str,
        user_id: str,
        request_hash: str,
        request: dict[str, Any],
        cart_id: str,
    ) -> dict[str, Any]:
        """Run (or join, or replay) the saga of this order; answers its final view."""
        await self._get_pool()
        order = await self.state(order_id)
        if order.step == "new":
            await self._persist(order, order.create(user_id, request_hash, request, cart_id,
                                                    self.clock()))  # fmt: skip
        elif order.user_id != user_id:
            return {"ok": False, "code": "not-found"}
        elif order.request_hash != request_hash:
            return {"ok": False, "code": "idempotency-mismatch", "order": order.view()}
        if order.step not in FINISHED_STEPS:
            await asyncio.shield(self._start(order_id))
        return {"ok": True, "order": order.view()}

    async def get(self, order_id: str) -> dict[str, Any] | None:
        """The order's view, or None."""
        order = await self.state(order_id)
        return None if order.step == "new" else order.view()

    async def cancel(self, order_id: str, user_id: str) -> dict[str, Any]:
        """Cancel before shipment: refund the payment and put the stock back."""
        order = await self.state(order_id)
        if order.step == "new" or order.user_id != user_id:
            return {"ok": False, "code": "not-found"}
        if order.status == "cancelled":
            return {"ok": True, "order": order.view()}
        if order.status not in ("confirmed", "pending_review"):
            return {"ok": False, "code": "not-cancellable", "order": order.view()}
        deps = self._dependencies()
        refund = None
        if order.payment and order.payment.get("payment_id"):
            refund = await deps.refund(order)
        if order.status == "confirmed":
            await deps.restock(order)
        await self._persist(order, order.cancelled(refund, self.clock()))
        return {"ok": True, "order": order.view()}

    async def operate(self, order_id: str, action: str, note: str | None = None) -> dict[str, Any]:
        """Operator actions: ``ship``, ``refund``, ``approve`` or ``reject`` (fraud review)."""
        order = await self.state(order_id)
        if order.step == "new":
            return {"ok": False, "code": "not-found"}
        allowed = {
            "ship": ("confirmed",),
            "refund": ("confirmed", "shipped"),
            "approve": ("pending_review",),
            "reject": ("pending_review",),
        }[action]
        done = {"ship": "shipped", "refund": "refunded", "approve": "confirmed",
                "reject": "failed"}[action]  # fmt: skip
        reviewed = (order.fraud or {}).get("decision") == "review"
        if order.status == done and (action in ("ship", "refund") or reviewed):
            return {"ok": True, "order": order.view()}
        if order.status not in allowed:
            return {"ok": False, "code": "wrong-status", "order": order.view()}
        now = self.clock()
        if action == "ship":
            await self._persist(order, order.shipped(now, note))
        elif action == "refund":
            refund = await self._dependencies().refund(order)
            await self._persist(order, order.refunded(refund, now))
        elif action == "reject":
            await self._persist(order, order.failed("review-rejected", "Refused after review.",
                                                    now))  # fmt: skip
        else:
            order.approved(now)
            await self._persist(order, [])
            await asyncio.shield(self._start(order_id))
        return {"ok": True, "order": order.view()}

    async def erase_personal(self, order_id: str) -> None:
        """Drop the shopper's address from the order (GDPR erasure), durably."""
        order = await self.state(order_id)
        if order.step == "new":
            return
        order.erase_personal(self.clock())
        await self._persist(order, [])

    async def _run(self, order_id: str) -> None:
        order = await self.state(order_id)
        deps = self._dependencies()
        while order.step not in FINISHED_STEPS:
            step = order.step
            try:
                events = await getattr(deps, f"after_{step}")(order, self.clock())
            except Exception:
                log.exception("saga step %s of %s failed; retrying", step, order_id)
                await asyncio.sleep(0.5)
                continue
            await self._persist(order, events)

    async def drain(self) -> int:
        """Final flush before a graceful stop (running sagas resume after restart)."""
        for task in list(self._tasks.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 5)
        return await super().drain()


OrderShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(OrderShardImpl)  # type: ignore[call-overload]
