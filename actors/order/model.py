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

import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from streams.events import (
    ORDER_AWAITING_PAYMENT,
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


# --- what the saga's ports answer (frozen values; a refusal is a ``Rejected``) ---------


@dataclass(frozen=True)
class CartLine:
    sku: str
    name: str
    unit_price: int
    quantity: int


@dataclass(frozen=True)
class CartSnapshot:
    """The cart as checkout saw it: its lines and the coupon code it holds, if any."""

    cart_id: str
    lines: tuple[CartLine, ...]
    coupon: str | None = None


@dataclass(frozen=True)
class PricedLine:
    sku: str
    name: str
    quantity: int
    unit_price: int
    line_total: int


@dataclass(frozen=True)
class Priced:
    """The server-side price of the order (integer centavos)."""

    lines: tuple[PricedLine, ...]
    subtotal: int
    discount_total: int
    shipping: int
    tax: int
    total: int
    currency: str = "BRL"
    coupon: str | None = None


@dataclass(frozen=True)
class StockLine:
    """``quantity`` units of ``sku`` under reservation ``rid``."""

    sku: str
    rid: str
    quantity: int


@dataclass(frozen=True)
class ShortLine:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True)
class StockHeld:
    """Every line is held."""


@dataclass(frozen=True)
class OutOfStock:
    """Some lines do not fit; ``held`` are the lines a shard held anyway (to release)."""

    short: tuple[ShortLine, ...]
    held: tuple[str, ...] = ()


@dataclass(frozen=True)
class Charge:
    """The outcome of a charge attempt; ``declined`` is a value, not an exception."""

    status: Literal["succeeded", "declined", "failed"]
    payment_id: str | None
    amount: int
    currency: str
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Refund:
    status: Literal["succeeded", "failed", "manual"]
    refund_id: str | None
    amount: int


@dataclass(frozen=True)
class PixCharge:
    txid: str
    br_code: str
    expires_at: int
    amount: int


@dataclass(frozen=True)
class Ack:
    """A step whose only answer is that it happened (idempotently)."""


@dataclass(frozen=True)
class Unavailable:
    """A step that kept failing until its deadline (made by the shell, never by a port)."""

    detail: str


@dataclass(frozen=True)
class PixPaid:
    amount: int


@dataclass(frozen=True)
class PixExpired:
    """The Pix charge expired unpaid."""


# --- what the order shard answers -----------------------------------------------------


@dataclass(frozen=True)
class OrderReply:
    """The order's API view (``Order.view``)."""

    order: dict[str, Any]


@dataclass(frozen=True)
class PixSettled:
    code: str
    status: str


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
    compensations: list[str] = field(default_factory=list)
    ending: str = ""
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
        payload = {
            "order_id": self.order_id,
            "user_id": self.user_id,
            "status": self.status,
            "total": self.totals.get("total"),
            **extra,
        }
        return make_event(kind, self.order_id, payload, now_ms)

    def create(
        self, user_id: str, request_hash: str, request: dict[str, Any], cart_id: str, now_ms: int
    ) -> list[Envelope]:
        self.user_id, self.request_hash, self.request, self.cart_id = (
            user_id,
            request_hash,
            request,
            cart_id,
        )
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
        self.payment = {"method": "pix", "status": "pending", "payment_id": pix["txid"], "pix": pix}
        self._to("awaiting_payment", "awaiting", now_ms, "waiting for the Pix payment")
        return [self._event(ORDER_AWAITING_PAYMENT, now_ms)]

    def charged(self, payment: dict[str, Any], now_ms: int) -> list[Envelope]:
        self.payment = payment
        self._to("pending", "charged", now_ms, "payment captured")
        return [
            make_event(
                PAYMENT_PROCESSED,
                self.order_id,
                {
                    "order_id": self.order_id,
                    "payment_id": payment["payment_id"],
                    "amount": self.totals["total"],
                },
                now_ms,
            )
        ]

    def confirmed(self, now_ms: int) -> list[Envelope]:
        self._to("confirmed", "done", now_ms, "order confirmed")
        # The ledger's leaf names the total with its currency and the payment (issue 8).
        payment_id = (self.payment or {}).get("payment_id")
        currency = self.totals.get("currency", "BRL")
        return [self._event(ORDER_CONFIRMED, now_ms, currency=currency, payment_id=payment_id)]

    def failed(self, code: str, detail: str, now_ms: int, **extra: Any) -> list[Envelope]:
        self.failure = {"code": code, "detail": detail, **extra}
        self.reservations = {}
        self._to("failed", "done", now_ms, code)
        return [self._event(ORDER_FAILED, now_ms, reason=code)]

    def cancelled(self, refund: dict[str, Any] | None, now_ms: int) -> list[Envelope]:
        events = [self._event(ORDER_CANCELLED, now_ms)]
        if refund is not None:
            self.payment = {**(self.payment or {}), "refund": refund}
            events.append(
                make_event(
                    PAYMENT_REFUNDED, self.order_id, {"order_id": self.order_id, **refund}, now_ms
                )
            )
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
            make_event(
                PAYMENT_REFUNDED, self.order_id, {"order_id": self.order_id, **refund}, now_ms
            ),
        ]

    def compensating(
        self, undo: list[str], ending: str, now_ms: int, failure: dict[str, Any] | None = None
    ) -> None:
        """Start undoing the steps done (``undo``, in order); ``ending`` is the final status."""
        if failure is not None:
            self.failure = failure
        self.compensations = list(undo)
        self.ending = ending
        self._to(self.status, "compensating", now_ms, f"compensating: {', '.join(undo)}")

    def compensated(self, name: str, now_ms: int) -> None:
        """One compensation is done (persisted before the next)."""
        if self.compensations and self.compensations[0] == name:
            self.compensations.pop(0)
        self.version += 1

    def advanced(self, step: str, now_ms: int, note: str) -> None:
        """A step with no status change (recorded in ``step`` only)."""
        self.step = step
        self.version += 1
        del now_ms, note

    def approved(self, now_ms: int) -> None:
        """An operator cleared a held order: the saga goes on from screening."""
        self._to("pending", "screened", now_ms, "fraud review approved")

    def erase_personal(self, now_ms: int) -> None:
        """Keep the order for accounting, without the shopper's address."""
        if "shipping_address" in self.request:
            address = self.request["shipping_address"]
            self.request = {
                **self.request,
                "shipping_address": {"country": address.get("country"), "erased": True},
            }
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
