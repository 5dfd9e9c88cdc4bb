"""The checkout saga driven end to end with fake ports and a fake clock (Ray forbidden).

``drive`` is the order shard's loop without Ray or PostgreSQL: ``next_step``,
the real port dispatch (``call_port``), ``on_failure`` for retries against a
fake clock, ``apply``, and a "commit" that round-trips the order through its
stored document. The fakes are idempotent by key, as the real adapters are,
and count every call, so a double charge or a double hold shows.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest

from actors.fraud.rules import Screening
from actors.messages import Rejected
from actors.order.actor import call_port
from actors.order.model import (
    Ack,
    CartLine,
    CartSnapshot,
    Charge,
    Order,
    OutOfStock,
    PixCharge,
    PixExpired,
    PixPaid,
    Priced,
    PricedLine,
    Refund,
    ShortLine,
    StockHeld,
    Unavailable,
)
from actors.order.ports import Ports
from actors.order.saga import (
    AwaitPix,
    ChargeCard,
    GiveUp,
    Retry,
    apply,
    backoff_s,
    decide_cancel,
    decide_operation,
    next_step,
    on_failure,
)

ADDRESS = {
    "name": "Ana",
    "line1": "Av. Paulista",
    "city": "SP",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}
DEADLINE_MS = 20_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


@dataclass
class Fakes:
    """Every port in memory; ``calls`` counts each call by (port, key)."""

    clock: Clock
    on_hand: dict[str, int] = field(default_factory=dict)
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)
    sold: dict[str, int] = field(default_factory=dict)
    carts: dict[str, list[CartLine]] = field(default_factory=dict)
    coupon: str | None = None
    coupon_max: int = 100
    redeemed: set[str] = field(default_factory=set)
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    decision: str = "pass"
    psp_down: bool = False
    calls: Counter = field(default_factory=Counter)
    screened: tuple = ()  # (skus, shipping method) the fraud port was last given

    # Carts
    async def snapshot(self, cart_id: str) -> CartSnapshot:
        self.calls["snapshot", cart_id] += 1
        return CartSnapshot(cart_id, tuple(self.carts.get(cart_id, [])), self.coupon)

    async def clear(self, cart_id: str) -> Ack:
        self.calls["clear", cart_id] += 1
        self.carts[cart_id] = []
        return Ack()

    # Stock: two "shards" by the first letter of the SKU, each all-or-nothing
    async def reserve(self, order_id, lines, long_hold) -> StockHeld | OutOfStock:
        self.calls["reserve", order_id] += 1
        held, short = [], []
        for shard in sorted({line.sku[0] for line in lines}):
            group = [x for x in lines if x.sku[0] == shard]
            new = [x for x in group if x.rid not in self.holds and x.rid not in self.sold]
            missing = [x for x in new if self._available(x.sku) < x.quantity]
            if missing:
                short += [ShortLine(x.sku, x.quantity, self._available(x.sku)) for x in missing]
                continue
            for x in new:
                self.holds[x.rid] = (x.sku, x.quantity)
            held += [x.rid for x in group]
        return OutOfStock(tuple(short), tuple(held)) if short else StockHeld()

    def _available(self, sku: str) -> int:
        return self.on_hand.get(sku, 0) - sum(q for s, q in self.holds.values() if s == sku)

    async def commit(self, lines) -> Ack | Rejected:
        self.calls["commit"] += 1
        if any(x.rid not in self.holds and x.rid not in self.sold for x in lines):
            return Rejected("unknown-reservation", "gone")
        for x in lines:
            if x.rid in self.holds:
                sku, quantity = self.holds.pop(x.rid)
                self.on_hand[sku] -= quantity
                self.sold[x.rid] = quantity
        return Ack()

    async def release(self, lines) -> Ack:
        self.calls["release"] += 1
        for x in lines:
            self.holds.pop(x.rid, None)
        return Ack()

    async def restock(self, lines) -> Ack:
        self.calls["restock"] += 1
        for x in lines:
            if ("returned", x.rid) not in self.calls:
                self.calls["returned", x.rid] += 1
                self.on_hand[x.sku] += x.quantity
        return Ack()

    # Pricing and coupons
    async def price(self, cart, user_id, method, country, state, postal_code):
        self.calls["price"] += 1
        if not cart.lines:
            return Rejected("empty-cart", "The cart is empty.")
        subtotal = sum(x.unit_price * x.quantity for x in cart.lines)
        discount = subtotal // 10 if cart.coupon else 0
        lines = tuple(
            PricedLine(x.sku, x.name, x.quantity, x.unit_price, x.unit_price * x.quantity)
            for x in cart.lines
        )
        return Priced(
            lines, subtotal, discount, 1000, 0, subtotal - discount + 1000, coupon=cart.coupon
        )

    async def redeem(self, code, user_id, order_id) -> Ack | Rejected:
        self.calls["redeem", order_id] += 1
        if order_id in self.redeemed:
            return Ack()
        if len(self.redeemed) >= self.coupon_max:
            return Rejected("coupon-exhausted", "used up")
        self.redeemed.add(order_id)
        return Ack()

    async def unredeem(self, code, order_id) -> Ack:
        self.calls["unredeem", order_id] += 1
        self.redeemed.discard(order_id)
        return Ack()

    # Fraud
    async def screen(
        self, order_id, user_id, total, quantities, country, skus=(), shipping_method="standard"
    ) -> Screening:
        self.calls["screen"] += 1
        self.screened = (skus, shipping_method)
        score = {"pass": 0, "review": 60, "block": 90}[self.decision]
        return Screening(score, self.decision, ("rule",) if score else ())

    async def warm(self) -> None:
        self.calls["warm"] += 1

    def stats(self) -> dict:
        return {"screened": self.calls["screen"]}

    # Payments
    async def charge(self, key, amount, currency, token) -> Charge:
        self.calls["charge", key] += 1
        if self.psp_down:
            raise ConnectionError("PSP down")
        if key not in self.charges:
            declined = token == "pm_card_chargeDeclined"
            self.charges[key] = Charge(
                "declined" if declined else "succeeded",
                None if declined else f"pi_{key}",
                amount,
                currency,
                "card_declined" if declined else None,
            )
        return self.charges[key]

    async def open_pix(self, key, amount) -> PixCharge:
        self.calls["pix", key] += 1
        return PixCharge(f"tx{key}", "000201...", self.clock() // 1000 + 900, amount)

    async def pix_paid(self, key, amount) -> bool:
        return True

    async def expire_pix(self, key, amount) -> PixPaid | PixExpired:
        self.calls["expire_pix", key] += 1
        return PixExpired()

    async def refund(self, key, method, payment_id, amount) -> Refund:
        self.calls["refund", key] += 1
        self.refunds.setdefault(key, Refund("succeeded", f"re_{key}", amount))
        return self.refunds[key]

    async def void(self, key, method) -> Ack:
        self.calls["void", key] += 1
        return Ack()

    def ports(self) -> Ports:
        return Ports(carts=self, stock=self, pricing=self, fraud=self, payments=self)


def new_order(fakes: Fakes, token: str = "pm_card_visa", method: str = "card") -> Order:
    order = Order("o1")
    payment = {"method": method, "token": token} if method == "card" else {"method": "pix"}
    request = {"shipping_address": ADDRESS, "shipping_method": "standard", "payment": payment}
    order.create("u1", "h", request, "user:u1", fakes.clock())
    return order


def setup(**stock: int) -> Fakes:
    fakes = Fakes(Clock())
    fakes.on_hand = dict(stock) or {"A1": 5, "B1": 5}
    fakes.carts["user:u1"] = [CartLine("A1", "Apple", 1000, 2), CartLine("B1", "Book", 500, 1)]
    return fakes


def drive(order: Order, fakes: Fakes, crash_after: int | None = None) -> tuple[Order, list]:
    """Run the saga like the shell does; ``crash_after`` n commits, reload from the document."""
    events, commits = [], 0

    async def run() -> Order:
        nonlocal commits, order
        attempt, first = 0, None
        while (step := next_step(order)) is not None:
            try:
                result = await call_port(fakes.ports(), step)
            except ConnectionError as exc:
                now = fakes.clock()
                first = now if first is None else first
                decision = on_failure(step, attempt, first, now, DEADLINE_MS, 0.5, str(exc))
                if isinstance(decision, Retry):
                    attempt += 1
                    fakes.clock.now += int(decision.delay_s * 1000)
                    continue
                result = Unavailable(decision.detail)
            attempt, first = 0, None
            events.extend(apply(order, step, result, fakes.clock()))
            commits += 1
            fakes.clock.now += 5
            if commits == crash_after:  # the shard dies: only the stored document survives
                order = Order.from_doc(order.order_id, order.to_doc(), order.version)
        return order

    return asyncio.run(run()), [e.type for e in events]


def test_happy_card_path_confirms_commits_and_clears():
    fakes = setup()
    order, events = drive(new_order(fakes), fakes)
    assert order.status == "confirmed" and order.step == "done"
    assert fakes.on_hand == {"A1": 3, "B1": 4} and fakes.holds == {}
    assert fakes.carts["user:u1"] == []
    assert fakes.calls["charge", "o1"] == 1 and fakes.calls["reserve", "o1"] == 1
    assert events == ["payment.processed", "order.confirmed"]
    assert order.totals["total"] == 2 * 1000 + 500 + 1000


def test_fraud_screening_sees_the_lines_skus_and_the_shipping_method():
    fakes = setup()
    order = new_order(fakes)
    order.request["shipping_method"] = "express"
    drive(order, fakes)
    assert fakes.screened == (("A1", "B1"), "express")


def test_pix_waits_with_stock_held_then_the_payment_finishes_it():
    fakes = setup()
    order, _ = drive(new_order(fakes, method="pix"), fakes)
    assert order.status == "awaiting_payment" and next_step(order) is None
    assert len(fakes.holds) == 2 and order.view()["pix"]["txid"] == "txo1"
    apply(order, AwaitPix("o1"), PixPaid(order.totals["total"]), fakes.clock())
    order, _ = drive(order, fakes)
    assert order.status == "confirmed" and fakes.holds == {} and fakes.on_hand["A1"] == 3


def test_pix_expiry_voids_releases_and_fails():
    fakes = setup()
    order, _ = drive(new_order(fakes, method="pix"), fakes)
    apply(order, AwaitPix("o1"), PixExpired(), fakes.clock())
    order, events = drive(order, fakes)
    assert order.status == "failed" and order.failure["code"] == "payment-expired"
    assert fakes.holds == {} and fakes.calls["void", "o1"] == 1
    assert events[-1] == "order.failed"


def test_decline_releases_the_stock():
    fakes = setup()
    order, events = drive(new_order(fakes, token="pm_card_chargeDeclined"), fakes)
    assert order.status == "failed" and order.failure["code"] == "payment-declined"
    assert order.failure["decline_code"] == "card_declined"
    assert fakes.holds == {} and fakes.on_hand == {"A1": 5, "B1": 5}
    assert fakes.carts["user:u1"] != [] and events == ["order.failed"]


def test_out_of_stock_releases_the_partial_holds_and_lists_short_lines():
    fakes = setup(A1=5, B1=0)
    order, _ = drive(new_order(fakes), fakes)
    assert order.status == "failed" and order.failure["code"] == "out-of-stock"
    assert order.failure["lines"] == [{"sku": "B1", "requested": 1, "available": 0}]
    assert fakes.calls["release"] == 1 and fakes.holds == {}
    assert ("charge", "o1") not in fakes.calls


def test_out_of_stock_with_nothing_held_fails_at_once():
    fakes = setup(A1=0, B1=0)
    order, _ = drive(new_order(fakes), fakes)
    assert order.failure["code"] == "out-of-stock" and fakes.calls["release"] == 0


def test_fraud_block_fails_before_any_stock_is_touched():
    fakes = setup()
    fakes.decision = "block"
    order, events = drive(new_order(fakes), fakes)
    assert order.status == "failed" and order.failure["code"] == "fraud-blocked"
    assert ("reserve", "o1") not in fakes.calls and events == ["order.failed"]


def test_fraud_review_holds_then_approval_completes():
    fakes = setup()
    fakes.decision = "review"
    order, events = drive(new_order(fakes), fakes)
    assert order.status == "pending_review" and events == ["order.pending_review"]
    assert fakes.holds == {}
    assert decide_operation(order, "approve", None, fakes.clock()) == []
    order, _ = drive(order, fakes)
    assert order.status == "confirmed"


def test_empty_cart_fails_explained():
    fakes = setup()
    fakes.carts["user:u1"] = []
    order, _ = drive(new_order(fakes), fakes)
    assert order.failure["code"] == "empty-cart"


@pytest.mark.parametrize("crash_after", range(1, 8))
def test_a_crash_after_any_step_resumes_without_doing_anything_twice(crash_after):
    fakes = setup()
    fakes.coupon = "TEN"
    order, _ = drive(new_order(fakes), fakes, crash_after=crash_after)
    assert order.status == "confirmed"
    assert len(fakes.charges) == 1 and fakes.calls["charge", "o1"] == 1
    assert fakes.calls["reserve", "o1"] == 1 and fakes.calls["redeem", "o1"] == 1
    assert fakes.on_hand == {"A1": 3, "B1": 4} and fakes.holds == {}


@pytest.mark.parametrize("lost", ["screened", "reserved", "charged"])
def test_a_step_repeated_after_a_crash_before_its_commit_is_idempotent(lost):
    """The port call of the step after ``lost`` ran, but the shard died before its commit."""
    fakes = setup()
    order = new_order(fakes)
    while order.step != lost:
        step = next_step(order)
        apply(order, step, asyncio.run(call_port(fakes.ports(), step)), fakes.clock())
    stored = order.to_doc(), order.version
    step = next_step(order)
    asyncio.run(call_port(fakes.ports(), step))  # done at the port, never committed here
    order, _ = drive(Order.from_doc("o1", *stored), fakes)
    assert order.status == "confirmed" and len(fakes.charges) == 1
    assert fakes.on_hand == {"A1": 3, "B1": 4} and fakes.holds == {}


def test_psp_down_retries_with_backoff_then_compensates_to_an_explained_failure():
    fakes = setup()
    fakes.psp_down = True
    fakes.coupon = "TEN"
    start = fakes.clock()
    order, events = drive(new_order(fakes), fakes)
    assert order.status == "failed" and order.failure["code"] == "payment-unavailable"
    tries = fakes.calls["charge", "o1"]
    assert 5 <= tries <= 40
    assert DEADLINE_MS <= fakes.clock() - start <= DEADLINE_MS + 5_000
    assert fakes.holds == {} and fakes.redeemed == set()
    assert fakes.calls["void", "o1"] == 1 and events == ["order.failed"]


def test_coupon_exhausted_releases_stock_and_fails_without_charging():
    fakes = setup()
    fakes.coupon, fakes.coupon_max = "TEN", 0
    order, _ = drive(new_order(fakes), fakes)
    assert order.status == "failed" and order.failure["code"] == "coupon-exhausted"
    assert fakes.holds == {} and ("charge", "o1") not in fakes.calls


def test_decline_after_redeeming_gives_the_coupon_use_back():
    fakes = setup()
    fakes.coupon = "TEN"
    order, _ = drive(new_order(fakes, token="pm_card_chargeDeclined"), fakes)
    assert order.failure["code"] == "payment-declined" and fakes.redeemed == set()
    assert fakes.calls["unredeem", "o1"] == 1


def test_lost_reservation_at_commit_refunds():
    fakes = setup()
    order = new_order(fakes)
    while order.step != "charged":
        step = next_step(order)
        apply(order, step, asyncio.run(call_port(fakes.ports(), step)), fakes.clock())
    fakes.holds.clear()  # swept before the commit
    order, _ = drive(order, fakes)
    assert order.failure["code"] == "reservation-expired"
    assert order.payment["refund"]["status"] == "succeeded" and fakes.calls["refund", "o1"] == 1


def test_cancel_is_decided_before_any_call_and_then_ship_loses():
    fakes = setup()
    order, _ = drive(new_order(fakes), fakes)
    assert decide_cancel(order, "u1", fakes.clock()) == []
    assert order.step == "compensating"
    shipped = decide_operation(order, "ship", None, fakes.clock())
    assert isinstance(shipped, Rejected) and shipped.code == "wrong-status"
    order, events = drive(order, fakes)
    assert order.status == "cancelled" and fakes.on_hand == {"A1": 5, "B1": 5}
    assert events == ["order.cancelled", "payment.refunded"]
    assert decide_cancel(order, "u1", fakes.clock()) == []  # idempotent


def test_ship_first_then_cancel_loses():
    fakes = setup()
    order, _ = drive(new_order(fakes), fakes)
    assert [e.type for e in decide_operation(order, "ship", "Correios", 1)] == ["order.shipped"]
    refused = decide_cancel(order, "u1", 2)
    assert isinstance(refused, Rejected) and refused.code == "not-cancellable"
    assert isinstance(decide_cancel(order, "u2", 2), Rejected)


def test_backoff_is_capped_and_jittered_and_only_early_steps_give_up():
    assert backoff_s(0, 0.0) == pytest.approx(0.05)
    assert backoff_s(50, 0.999) <= 2.0
    assert backoff_s(3, 0.0) < backoff_s(3, 0.9)
    charge = ChargeCard("o1", 1, "BRL", "pm_x")
    assert isinstance(on_failure(charge, 9, 0, DEADLINE_MS, DEADLINE_MS, 0.1, "x"), GiveUp)
    assert isinstance(on_failure(charge, 9, 0, DEADLINE_MS - 1, DEADLINE_MS, 0.1, "x"), Retry)
    commit = next_step(_charged_order())
    assert isinstance(on_failure(commit, 9, 0, 10**9, DEADLINE_MS, 0.1, "x"), Retry)


def _charged_order() -> Order:
    order = Order("o2", step="charged", lines=[{"sku": "A1", "quantity": 1}])
    order.reservations = {"A1": "o2:A1"}
    return order
