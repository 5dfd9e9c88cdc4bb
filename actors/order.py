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
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from actors.shard import ShardShell
from cluster.settings import Settings
from streams.events import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    ORDER_FAILED,
    ORDER_PENDING_REVIEW,
    ORDER_REFUNDED,
    ORDER_SHIPPED,
    PAYMENT_PROCESSED,
    PAYMENT_REFUNDED,
    Envelope,
    EventType,
    make_event,
)

log = logging.getLogger(__name__)

ORDER_NAMESPACE = uuid.UUID("5b0c6f9e-4d7e-4c55-9a52-0a6f0e7c2b11")
FINISHED_STEPS = ("done", "review", "awaiting")


def order_id_for(user_id: str, idempotency_key: str) -> str:
    """The one order a user's ``Idempotency-Key`` names."""
    return str(uuid.uuid5(ORDER_NAMESPACE, f"{user_id}\x00{idempotency_key}"))


@dataclass
class Order:
    """One order. Transitions append to ``history`` and return the events they produced."""

    order_id: str
    user_id: str = ""
    request_hash: str = ""
    request: dict[str, Any] = field(default_factory=dict)
    cart_id: str = ""
    status: str = "pending"
    step: str = "new"
    lines: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    fraud: dict[str, Any] | None = None
    reservations: dict[str, str] = field(default_factory=dict)
    payment: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    created_ms: int = 0
    version: int = 0

    def _to(self, status: str, step: str, now_ms: int, note: str = "") -> None:
        if status != self.status or not self.history:
            self.history.append({"status": status, "at_ms": now_ms, "note": note})
        self.status = status
        self.step = step
        self.version += 1

    def _event(self, kind: EventType, now_ms: int, **extra: Any) -> Envelope:
        payload = {"order_id": self.order_id, "user_id": self.user_id, "status": self.status,
                   "total": self.totals.get("total"), **extra}  # fmt: skip
        return make_event(kind, self.order_id, payload, now_ms)

    def create(
        self, user_id: str, request_hash: str, request: dict[str, Any], cart_id: str, now_ms: int
    ) -> list[Envelope]:
        self.user_id, self.request_hash, self.request, self.cart_id = (
            user_id, request_hash, request, cart_id,
        )  # fmt: skip
        self.created_ms = now_ms
        self._to("pending", "created", now_ms, "checkout started")
        return [self._event(ORDER_CREATED, now_ms)]

    def priced(self, lines: list[dict[str, Any]], totals: dict[str, Any], now_ms: int) -> None:
        self.lines, self.totals = lines, totals
        self._to("pending", "priced", now_ms, "priced")

    def screened(
        self, score: int, decision: str, reasons: list[str], now_ms: int
    ) -> list[Envelope]:
        self.fraud = {"score": score, "decision": decision, "reasons": reasons}
        if decision == "review":
            self._to("pending_review", "review", now_ms, "held for fraud review")
            return [self._event(ORDER_PENDING_REVIEW, now_ms)]
        self._to("pending", "screened", now_ms, "fraud screening passed")
        return []

    def reserved(self, reservations: dict[str, str], now_ms: int) -> None:
        self.reservations = reservations
        self._to("pending", "reserved", now_ms, "stock reserved")

    def awaiting_payment(self, pix: dict[str, Any], now_ms: int) -> list[Envelope]:
        """Stock is held; the order waits for the Pix payment (or its expiry)."""
        self.payment = {"method": "pix", "status": "pending", "payment_id": pix["txid"],
                        "pix": pix}  # fmt: skip
        self._to("awaiting_payment", "awaiting", now_ms, "waiting for the Pix payment")
        return []

    def charged(self, payment: dict[str, Any], now_ms: int) -> list[Envelope]:
        self.payment = payment
        self._to("pending", "charged", now_ms, "payment captured")
        return [make_event(PAYMENT_PROCESSED, self.order_id,
                           {"order_id": self.order_id, "payment_id": payment["payment_id"],
                            "amount": self.totals["total"]}, now_ms)]  # fmt: skip

    def confirmed(self, now_ms: int) -> list[Envelope]:
        self._to("confirmed", "done", now_ms, "order confirmed")
        return [self._event(ORDER_CONFIRMED, now_ms)]

    def failed(self, code: str, detail: str, now_ms: int, **extra: Any) -> list[Envelope]:
        self.failure = {"code": code, "detail": detail, **extra}
        self.reservations = {}
        self._to("failed", "done", now_ms, code)
        return [self._event(ORDER_FAILED, now_ms, reason=code)]

    def cancelled(self, refund: dict[str, Any] | None, now_ms: int) -> list[Envelope]:
        events = [self._event(ORDER_CANCELLED, now_ms)]
        if refund is not None:
            self.payment = {**(self.payment or {}), "refund": refund}
            events.append(make_event(PAYMENT_REFUNDED, self.order_id,
                                     {"order_id": self.order_id, **refund}, now_ms))  # fmt: skip
        self._to("cancelled", "done", now_ms, "cancelled by the shopper")
        return events

    def shipped(self, now_ms: int, carrier: str | None) -> list[Envelope]:
        self._to("shipped", "done", now_ms, f"shipped{' via ' + carrier if carrier else ''}")
        return [self._event(ORDER_SHIPPED, now_ms)]

    def refunded(self, refund: dict[str, Any], now_ms: int) -> list[Envelope]:
        self.payment = {**(self.payment or {}), "refund": refund}
        self._to("refunded", "done", now_ms, "refunded by an operator")
        return [
            self._event(ORDER_REFUNDED, now_ms),
            make_event(PAYMENT_REFUNDED, self.order_id, {"order_id": self.order_id, **refund},
                       now_ms),
        ]  # fmt: skip

    def approved(self, now_ms: int) -> None:
        """An operator cleared a held order: the saga goes on from screening."""
        self._to("pending", "screened", now_ms, "fraud review approved")

    def erase_personal(self, now_ms: int) -> None:
        """Keep the order for accounting, without the shopper's address."""
        if "shipping_address" in self.request:
            address = self.request["shipping_address"]
            self.request = {**self.request, "shipping_address": {
                "country": address.get("country"), "erased": True}}  # fmt: skip
            self.version += 1

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, order_id: str, doc: dict[str, Any], version: int) -> Order:
        return cls(**{**doc, "order_id": order_id, "version": version})

    def view(self) -> dict[str, Any]:
        """What the API renders (no payment token, no internal step names)."""
        payment = None
        if self.payment:
            payment = {k: self.payment.get(k) for k in ("status", "payment_id", "method")}
        return {
            "id": self.order_id,
            "status": self.status,
            "lines": self.lines,
            "totals": self.totals,
            "shipping_address": self.request.get("shipping_address"),
            "shipping_method": self.request.get("shipping_method"),
            "payment": payment,
            "fraud": {"decision": self.fraud["decision"]} if self.fraud else None,
            "pix": (self.payment or {}).get("pix") if self.status == "awaiting_payment" else None,
            "failure": self.failure,
            "history": self.history,
            "created_at_ms": self.created_ms,
        }


class OrderStore:
    """PostgreSQL adapter: the ``orders`` row of each order (document + list columns)."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        import json

        await conn.execute(
            """
            INSERT INTO orders (order_id, user_id, status, step, data, version, created_at)
            SELECT r.id, r.user_id, r.status, r.step, r.data::jsonb, r.version,
                   to_timestamp(r.created_ms / 1000.0)
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::bigint[], $7::bigint[])
                 AS r(id, user_id, status, step, data, version, created_ms)
            ON CONFLICT (order_id) DO UPDATE
               SET status = EXCLUDED.status, step = EXCLUDED.step, data = EXCLUDED.data,
                   version = EXCLUDED.version, updated_at = now()
             WHERE orders.version < EXCLUDED.version
            """,
            [r[0] for r in rows],
            [r[1]["user_id"] for r in rows],
            [r[1]["status"] for r in rows],
            [r[1]["step"] for r in rows],
            [json.dumps(r[1], separators=(",", ":")) for r in rows],
            [r[2] for r in rows],
            [r[1]["created_ms"] for r in rows],
        )

    async def load(self, conn: Any, order_id: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow("SELECT data, version FROM orders WHERE order_id = $1", order_id)
        return None if row is None else (row["data"], row["version"])


def _now_ms() -> int:
    return int(time.time() * 1000)


class OrderShardImpl(ShardShell[Order]):
    """Owns many orders and runs their sagas; every step is persisted before the next."""

    store = OrderStore()  # type: ignore[assignment]

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        super().__init__(name, settings)
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
            from actors.saga_deps import SagaDependencies

            self._deps = SagaDependencies(self.settings, self._pool)
        return self._deps

    async def _persist(self, order: Order, events: list[Envelope]) -> None:
        self.changed(order.order_id, order, events)
        await self.flusher.durable(order.order_id, order.version)

    async def _resume_unfinished(self) -> None:
        """After a (re)start, continue every unfinished saga this shard owns."""
        from serve.runtime import shard_directory

        directory = shard_directory(self.settings)
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
            now = _now_ms()
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
        await self._persist(order, order.charged(payment, _now_ms()))
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
                                                    _now_ms()))  # fmt: skip
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
        await self._persist(order, order.cancelled(refund, _now_ms()))
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
        now = _now_ms()
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
        order.erase_personal(_now_ms())
        await self._persist(order, [])

    async def _run(self, order_id: str) -> None:
        order = await self.state(order_id)
        deps = self._dependencies()
        while order.step not in FINISHED_STEPS:
            step = order.step
            try:
                events = await getattr(deps, f"after_{step}")(order, _now_ms())
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
