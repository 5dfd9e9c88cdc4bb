"""The checkout saga, pure: which port call comes next, and what its answer does to the order.

No Ray, no I/O, no clock: ``next_step(order)`` names the one port call to make
(a frozen ``Step`` value), the shell makes it, and ``apply(order, step, result,
now_ms)`` moves the order on and returns the events to commit with it.

Steps (``Order.step`` after each is persisted):

=============  ===================================  ==================================
step           next call                            on refusal
=============  ===================================  ==================================
created        ``PriceCart`` (cart snapshot+price)  failed (empty-cart, coupon-...)
priced         ``ScreenFraud``                      failed (fraud-blocked); review holds
screened       ``ReserveStock`` (all lines)         release partial holds, out-of-stock
reserved       ``RedeemCoupon`` (if a coupon)       release, coupon-exhausted / -user-limit
redeemed       ``ChargeCard`` or ``OpenPix``        unredeem, release, payment-declined
awaiting       (the Pix webhook or expiry)          void, unredeem, release, payment-expired
charged        ``CommitStock``                      refund, unredeem, release, reservation-expired
committed      ``ClearCart`` -> confirmed           (retried until it succeeds)
compensating   the next compensation                (retried until it succeeds)
=============  ===================================  ==================================

A step up to the charge that keeps failing is retried with capped, jittered
exponential backoff (``backoff_s``) until ``deadline_ms`` has passed since its
first failure; the shell then applies ``Unavailable`` and the saga compensates
and fails with ``<what>-unavailable``. Steps after the charge and every
compensation only move forward: they are retried until they succeed.

Cancel, ship, refund and fraud-review decisions are ``decide`` below: each is
decided synchronously on the state (no await in between), so two concurrent
operations can never both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.fraud.rules import Screening
from actors.messages import Rejected
from actors.order.model import (
    Ack,
    CartSnapshot,
    Charge,
    Order,
    OutOfStock,
    PixCharge,
    PixExpired,
    PixPaid,
    Priced,
    Refund,
    StockHeld,
    StockLine,
    Unavailable,
)
from streams.events import Envelope

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0


# --- steps: the one port call to make next --------------------------------------------


@dataclass(frozen=True)
class PriceCart:
    cart_id: str
    user_id: str
    shipping_method: str
    country: str
    state: str
    postal_code: str


@dataclass(frozen=True)
class ScreenFraud:
    order_id: str
    user_id: str
    total: int
    quantities: tuple[int, ...]
    country: str
    skus: tuple[str, ...] = ()  # one per quantity, same order
    shipping_method: str = "standard"


@dataclass(frozen=True)
class ReserveStock:
    order_id: str
    lines: tuple[StockLine, ...]
    long_hold: bool


@dataclass(frozen=True)
class RedeemCoupon:
    code: str
    user_id: str
    order_id: str


@dataclass(frozen=True)
class ChargeCard:
    key: str
    amount: int
    currency: str
    token: str


@dataclass(frozen=True)
class OpenPix:
    key: str
    amount: int


@dataclass(frozen=True)
class AwaitPix:
    """Not a call: the Pix webhook (``PixPaid``) or the expiry (``PixExpired``) answers it."""

    key: str


@dataclass(frozen=True)
class CommitStock:
    lines: tuple[StockLine, ...]


@dataclass(frozen=True)
class ClearCart:
    cart_id: str


@dataclass(frozen=True)
class ReleaseStock:
    lines: tuple[StockLine, ...]


@dataclass(frozen=True)
class UnredeemCoupon:
    code: str
    order_id: str


@dataclass(frozen=True)
class RefundPayment:
    key: str
    method: str
    payment_id: str | None
    amount: int


@dataclass(frozen=True)
class VoidPayment:
    key: str
    method: str


@dataclass(frozen=True)
class Restock:
    lines: tuple[StockLine, ...]


Step = (
    PriceCart
    | ScreenFraud
    | ReserveStock
    | RedeemCoupon
    | ChargeCard
    | OpenPix
    | AwaitPix
    | CommitStock
    | ClearCart
    | ReleaseStock
    | UnredeemCoupon
    | RefundPayment
    | VoidPayment
    | Restock
)
Compensation = ReleaseStock | UnredeemCoupon | RefundPayment | VoidPayment | Restock
# Steps with a deadline: before the money is taken, giving up and compensating is safe.
BOUNDED = (PriceCart, ScreenFraud, ReserveStock, RedeemCoupon, ChargeCard, OpenPix)
UNAVAILABLE_CODE = {
    PriceCart: "pricing-unavailable",
    ScreenFraud: "fraud-unavailable",
    ReserveStock: "stock-unavailable",
    RedeemCoupon: "coupon-unavailable",
    ChargeCard: "payment-unavailable",
    OpenPix: "payment-unavailable",
}


def rid_for(order_id: str, sku: str) -> str:
    """The reservation id of one order line (the same on every retry)."""
    return f"{order_id}:{sku}"


def stock_lines(order: Order, *, returning: bool = False) -> tuple[StockLine, ...]:
    """The order's lines as reservations (or, ``returning``, as one-time returns)."""
    lines = []
    for line in order.lines:
        rid = f"{order.order_id}:return:{line['sku']}" if returning else None
        rid = rid or order.reservations.get(line["sku"]) or rid_for(order.order_id, line["sku"])
        lines.append(StockLine(line["sku"], rid, int(line["quantity"])))
    return tuple(lines)


def _coupon(order: Order) -> str | None:
    code = order.totals.get("coupon")
    return str(code) if code else None


def _method(order: Order) -> str:
    return str(order.request.get("payment", {}).get("method", "card"))


def next_step(order: Order) -> Step | None:
    """The one port call the order needs next, or None when it waits or is finished."""
    step = order.step
    if step == "created":
        address = order.request["shipping_address"]
        return PriceCart(
            order.cart_id,
            order.user_id,
            order.request["shipping_method"],
            address["country"],
            address.get("state") or "",
            address["postal_code"],
        )
    if step == "priced":
        return ScreenFraud(
            order.order_id,
            order.user_id,
            int(order.totals["total"]),
            tuple(int(line["quantity"]) for line in order.lines),
            order.request["shipping_address"]["country"],
            tuple(str(line["sku"]) for line in order.lines),
            str(order.request.get("shipping_method") or "standard"),
        )
    if step == "screened":
        return ReserveStock(order.order_id, stock_lines(order), _method(order) == "pix")
    if step == "reserved" and _coupon(order):
        return RedeemCoupon(str(_coupon(order)), order.user_id, order.order_id)
    if step in ("reserved", "redeemed"):
        total = int(order.totals["total"])
        if _method(order) == "pix":
            return OpenPix(order.order_id, total)
        payment = order.request["payment"]
        return ChargeCard(
            order.order_id, total, order.totals.get("currency", "BRL"), payment["token"]
        )
    if step == "charged":
        return CommitStock(stock_lines(order))
    if step == "committed":
        return ClearCart(order.cart_id)
    if step == "compensating" and order.compensations:
        return _compensation(order, order.compensations[0])
    return None


def _compensation(order: Order, name: str) -> Compensation:
    payment = order.payment or {}
    if name == "release":
        return ReleaseStock(stock_lines(order))
    if name == "unredeem":
        return UnredeemCoupon(str(_coupon(order)), order.order_id)
    if name == "refund":
        return RefundPayment(
            order.order_id,
            payment.get("method") or _method(order),
            payment.get("payment_id"),
            int(order.totals["total"]),
        )
    if name == "void":
        return VoidPayment(order.order_id, _method(order))
    if name == "restock":
        return Restock(stock_lines(order, returning=True))
    raise ValueError(f"unknown compensation {name!r}")


_COMPENSATION_NAME = {
    ReleaseStock: "release",
    UnredeemCoupon: "unredeem",
    RefundPayment: "refund",
    VoidPayment: "void",
    Restock: "restock",
}


# --- apply: what an answer does ---------------------------------------------------------


def _fail(
    order: Order, code: str, detail: str, undo: list[str], now_ms: int, **extra: Any
) -> list[Envelope]:
    """Fail with a reason: at once when nothing is to undo, else after the compensations."""
    if not undo:
        return order.failed(code, detail, now_ms, **extra)
    order.compensating(undo, "failed", now_ms, {"code": code, "detail": detail, **extra})
    return []


def _undo_from(order: Order, reached: str) -> list[str]:
    """The compensations of every step done before ``reached`` (most recent first)."""
    undo = []
    if reached in ("charged",):
        undo.append("refund")
    if reached in ("charging", "awaiting"):
        undo.append("void")
    if _coupon(order) and reached in ("redeeming", "charging", "awaiting", "charged"):
        undo.append("unredeem")
    if reached in ("reserving", "redeeming", "charging", "awaiting", "charged"):
        undo.append("release")
    return undo


def apply(order: Order, step: Step, result: object, now_ms: int) -> list[Envelope]:
    """Move ``order`` on after ``step`` answered ``result``; returns the events to commit."""
    if isinstance(result, Unavailable):
        return _unavailable(order, step, result, now_ms)
    if isinstance(step, PriceCart):
        return _priced(order, result, now_ms)
    if isinstance(step, ScreenFraud):
        assert isinstance(result, Screening)
        if result.decision == "block":
            order.fraud = {
                "score": result.score,
                "decision": "block",
                "reasons": list(result.reasons),
            }
            return order.failed("fraud-blocked", "The order was refused.", now_ms)
        return order.screened(result.score, result.decision, list(result.reasons), now_ms)
    if isinstance(step, ReserveStock):
        return _reserved(order, step, result, now_ms)
    if isinstance(step, RedeemCoupon):
        if isinstance(result, Rejected):
            return _fail(order, result.code, result.detail, _undo_from(order, "reserving"), now_ms)
        order.advanced("redeemed", now_ms, "coupon redeemed")
        return []
    if isinstance(step, ChargeCard):
        assert isinstance(result, Charge)
        if result.status == "succeeded":
            return order.charged(
                {"payment_id": result.payment_id, "status": "succeeded", "method": "card"}, now_ms
            )
        return _fail(
            order,
            "payment-declined",
            "The card was declined.",
            _undo_from(order, "redeeming"),
            now_ms,
            decline_code=result.decline_code,
        )
    if isinstance(step, OpenPix):
        assert isinstance(result, PixCharge)
        pix = {
            "txid": result.txid,
            "br_code": result.br_code,
            "expires_at": result.expires_at,
            "amount": result.amount,
        }
        return order.awaiting_payment(pix, now_ms)
    if isinstance(step, AwaitPix):
        if isinstance(result, PixPaid):
            return order.charged({**(order.payment or {}), "status": "succeeded"}, now_ms)
        assert isinstance(result, PixExpired)
        return _fail(
            order,
            "payment-expired",
            "The Pix charge expired unpaid.",
            _undo_from(order, "awaiting"),
            now_ms,
        )
    if isinstance(step, CommitStock):
        if isinstance(result, Rejected):
            return _fail(
                order,
                "reservation-expired",
                "Stock was released before payment completed; refunded.",
                _undo_from(order, "charged"),
                now_ms,
            )
        order.advanced("committed", now_ms, "stock committed")
        return []
    if isinstance(step, ClearCart):
        return order.confirmed(now_ms)
    return _compensated(order, step, result, now_ms)


def _priced(order: Order, result: object, now_ms: int) -> list[Envelope]:
    if isinstance(result, Rejected):
        return order.failed(result.code, result.detail, now_ms)
    assert isinstance(result, Priced)
    if not result.lines:
        return order.failed("empty-cart", "The cart is empty.", now_ms)
    lines = [
        {
            "sku": q.sku,
            "name": q.name,
            "quantity": q.quantity,
            "unit_price": q.unit_price,
            "line_total": q.line_total,
        }
        for q in result.lines
    ]
    totals = {
        "subtotal": result.subtotal,
        "discount_total": result.discount_total,
        "shipping": result.shipping,
        "tax": result.tax,
        "total": result.total,
        "currency": result.currency,
        "coupon": result.coupon,
    }
    order.priced(lines, totals, now_ms)
    return []


def _reserved(order: Order, step: ReserveStock, result: object, now_ms: int) -> list[Envelope]:
    if isinstance(result, StockHeld):
        order.reserved({line.sku: line.rid for line in step.lines}, now_ms)
        return []
    assert isinstance(result, OutOfStock)
    short = [
        {"sku": s.sku, "requested": s.requested, "available": s.available} for s in result.short
    ]
    held = {line.sku: line.rid for line in step.lines if line.rid in result.held}
    order.reservations = held
    undo = ["release"] if held else []
    return _fail(order, "out-of-stock", "Some lines are not in stock.", undo, now_ms, lines=short)


def _unavailable(order: Order, step: Step, result: Unavailable, now_ms: int) -> list[Envelope]:
    code = UNAVAILABLE_CODE.get(type(step))
    if code is None:
        raise ValueError(f"{type(step).__name__} is retried until it succeeds")
    reached = {
        ReserveStock: "reserving",
        RedeemCoupon: "redeeming",
        ChargeCard: "charging",
        OpenPix: "charging",
    }.get(type(step), "")
    if isinstance(step, ReserveStock):
        order.reservations = {line.sku: line.rid for line in step.lines}
    detail = f"Checkout could not complete: {result.detail}"
    return _fail(order, code, detail, _undo_from(order, reached), now_ms)


def _compensated(order: Order, step: Step, result: object, now_ms: int) -> list[Envelope]:
    name = _COMPENSATION_NAME[type(step)]  # type: ignore[index]
    events: list[Envelope] = []
    if isinstance(step, RefundPayment):
        assert isinstance(result, Refund)
        order.payment = {
            **(order.payment or {}),
            "refund": {
                "refund_id": result.refund_id,
                "status": result.status,
                "amount": result.amount,
            },
        }
    if isinstance(step, ReleaseStock):
        order.reservations = {}
    order.compensated(name, now_ms)
    if order.compensations:
        return events
    return _finish(order, now_ms)


def _finish(order: Order, now_ms: int) -> list[Envelope]:
    """Every compensation is done: the order takes its final, explained status."""
    refund = (order.payment or {}).get("refund")
    if order.ending == "cancelled":
        return order.cancelled(refund, now_ms)
    if order.ending == "refunded":
        assert refund is not None
        return order.refunded(refund, now_ms)
    failure = order.failure or {"code": "failed", "detail": "The order failed."}
    extra = {k: v for k, v in failure.items() if k not in ("code", "detail")}
    return order.failed(failure["code"], failure["detail"], now_ms, **extra)


# --- operations: decided before any await ------------------------------------------------

OPERATIONS = {
    "ship": ("confirmed",),
    "refund": ("confirmed", "shipped"),
    "approve": ("pending_review",),
    "reject": ("pending_review",),
}
_DONE = {"ship": "shipped", "refund": "refunded", "approve": "confirmed", "reject": "failed"}


def decide_cancel(order: Order, user_id: str, now_ms: int) -> list[Envelope] | Rejected:
    """The shopper cancels: refund, put sold stock back, give the coupon use back.

    Decided here and persisted as the ``compensating`` step before any port is
    called, so a concurrent ship (or second cancel) sees it at once.
    """
    if order.step == "new" or order.user_id != user_id:
        return Rejected("not-found", "No such order.")
    if order.status == "cancelled" or (
        order.step == "compensating" and order.ending == "cancelled"
    ):
        return []
    if order.status not in ("confirmed", "pending_review") or order.step not in ("done", "review"):
        return Rejected("not-cancellable", f"The order is {order.status}; it cannot be cancelled.")
    undo = []
    if order.status == "confirmed":
        if (order.payment or {}).get("payment_id"):
            undo.append("refund")
        undo.append("restock")
        if _coupon(order):
            undo.append("unredeem")
    if not undo:
        return order.cancelled(None, now_ms)
    order.compensating(undo, "cancelled", now_ms)
    return []


def decide_operation(
    order: Order, action: str, note: str | None, now_ms: int
) -> list[Envelope] | Rejected:
    """An operator's ``ship``, ``refund``, ``approve`` or ``reject``; idempotent when done."""
    if order.step == "new":
        return Rejected("not-found", "No such order.")
    reviewed = (order.fraud or {}).get("decision") == "review"
    if order.status == _DONE[action] and order.step == "done":
        if action in ("ship", "refund") or reviewed:
            return []
    if action == "refund" and order.step == "compensating" and order.ending == "refunded":
        return []
    if order.status not in OPERATIONS[action] or order.step not in ("done", "review"):
        return Rejected("wrong-status", f"The order is {order.status}; not possible: {action}.")
    if action == "ship":
        return order.shipped(now_ms, note)
    if action == "refund":
        if not (order.payment or {}).get("payment_id"):
            return Rejected("wrong-status", "The order has no payment to refund.")
        order.compensating(["refund"], "refunded", now_ms)
        return []
    if action == "reject":
        return order.failed("review-rejected", "Refused after review.", now_ms)
    order.approved(now_ms)
    return []


# --- retry policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    detail: str


def backoff_s(
    attempt: int, jitter: float, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S
) -> float:
    """Capped exponential backoff with full jitter; ``jitter`` is a fraction in [0, 1)."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return ceiling * (0.5 + jitter / 2)


def on_failure(
    step: Step,
    attempt: int,
    first_failure_ms: int,
    now_ms: int,
    deadline_ms: int,
    jitter: float,
    detail: str,
) -> Retry | GiveUp:
    """After a failed call: retry later, or (a bounded step past its deadline) give up."""
    if isinstance(step, BOUNDED) and now_ms - first_failure_ms >= deadline_ms:
        return GiveUp(detail)
    return Retry(backoff_s(attempt, jitter))


def is_terminal(order: Order) -> bool:
    return order.step in ("done", "review", "awaiting")


__all__ = ["Ack", "CartSnapshot", "Step", "apply", "next_step"]
