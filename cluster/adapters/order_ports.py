"""Adapters of the checkout saga's ports (``actors.order.ports``), built once per order shard.

- ``CartsAdapter``: the cart shard through ``CartClient`` (lines and coupon; clear).
- ``StockAdapter``: the inventory shards through ``InventoryClient``: one
  ``reserve_many`` / ``commit_many`` / ``release_many`` call per shard
  involved, in parallel; all lines or none.
- ``PricingAdapter``: the pure ``actors.pricing.engine.quote`` over tables read
  from PostgreSQL through ``cluster.adapters.pricing_store``, and coupon
  redemption: one transaction that counts a use only while ``coupons.uses_total``
  and the shopper's own uses are under the coupon's limits (a conditional
  ``UPDATE`` takes the coupon's row lock, so concurrent checkouts of one coupon
  serialize here), idempotent per order.
- ``FraudAdapter``: facts from PostgreSQL, scored by the ``FraudScorer`` model
  deployment within ``fraud_model_budget_ms``, else by ``actors.fraud.rules.screen``.
- ``PaymentsAdapter``: card charges (``StripeCardGateway``) and Pix
  (``PixGateway``); an outcome not yet known raises, so the saga retries.

Every adapter gets the shard's one database pool through ``open_pool`` (opened
once, on first use); nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from actors.clients import CartClient, InventoryClient
from actors.fraud.rules import RESALE_CATEGORIES, FraudFacts, Screening, screen
from actors.inventory.model import Held, LineHold
from actors.messages import Rejected
from actors.order.model import (
    Ack,
    CartLine,
    CartSnapshot,
    Charge,
    OutOfStock,
    PixCharge,
    PixExpired,
    PixPaid,
    Priced,
    PricedLine,
    Refund,
    ShortLine,
    StockHeld,
    StockLine,
)
from actors.order.ports import Ports
from actors.pricing.engine import Coupon, Destination, Line, Quote, quote
from cluster.adapters import pricing_store
from cluster.adapters.pix_gateway import PixGateway
from cluster.adapters.stripe_card import StripeCardGateway

log = logging.getLogger(__name__)
OpenPool = Callable[[], Awaitable[Any]]
# The Serve application and the fraud model's deployment (serve.models.deployments).
SERVE_APP_NAME = "agora"
FRAUD_DEPLOYMENT = "FraudScorer"
# Once per shard process, the first model call looks the deployment up and sets up
# the handle's router (seconds). The shard makes that call at start (``warm``); an
# order arriving while that first attempt is in flight waits for it this long.
COLD_BUDGET_S = 3.0
# What the warm-up call scores: a plain order (its answer is thrown away).
WARM_FACTS: dict[str, Any] = {
    "total": 10_000,
    "units": 1,
    "max_units_one_sku": 1,
    "n_lines": 1,
    "country": "BR",
    "account_age_s": 86_400,
    "orders_last_hour": 0,
    "tokens_30d": 1,
    "hour": 12,
    "express": 0,
    "resale_units": 0,
}
# Model call latencies kept for the shard's stats (a sliding window).
LATENCY_WINDOW = 1024
Clock = Callable[[], int]
# A Pix charge past its expiry that the PSP cannot confirm unpaid (unreachable, failing) is
# asked about again at every expiry sweep, for at most this long past its expiry; then it
# expires anyway (an error logged: it may have been paid at the PSP, operators reconcile).
# The inventory releases the order's stock 300 s past the expiry whatever happens; a
# payment found later fails the order as ``reservation-expired`` (refunded through the PSP).
PIX_UNCONFIRMED_MAX_S = 24 * 3600


class PaymentUnavailable(RuntimeError):
    """The provider's answer is not known yet; the same key resumes the charge on retry."""


# --- carts ------------------------------------------------------------------------------


class CartsAdapter:
    """The cart as checkout sees it (lines and coupon code), and clearing it after the order."""

    def __init__(self, carts: CartClient) -> None:
        self.carts = carts

    async def snapshot(self, cart_id: str) -> CartSnapshot:
        view = await self.carts.get(cart_id)
        lines = tuple(CartLine(x.sku, x.name, x.unit_price, x.quantity) for x in view.lines)
        return CartSnapshot(cart_id, lines, view.coupon)

    async def clear(self, cart_id: str) -> Ack:
        await self.carts.clear(cart_id)
        return Ack()


# --- stock ------------------------------------------------------------------------------


class StockAdapter:
    """All of an order's lines in one parallel round: one call per inventory shard."""

    def __init__(self, inventory: InventoryClient, reservation_ttl_s: int, pix_hold_s: int) -> None:
        self.inventory = inventory
        self.ttl_s = reservation_ttl_s
        self.pix_hold_s = pix_hold_s

    @staticmethod
    def _holds(lines: tuple[StockLine, ...]) -> tuple[LineHold, ...]:
        return tuple(LineHold(x.sku, x.rid, x.quantity) for x in lines)

    async def reserve(
        self, order_id: str, lines: tuple[StockLine, ...], long_hold: bool
    ) -> StockHeld | OutOfStock:
        ttl = self.pix_hold_s if long_hold else self.ttl_s
        replies = await self.inventory.reserve_many(order_id, self._holds(lines), ttl)
        held: list[str] = []
        short: list[ShortLine] = []
        for reply in replies:
            if isinstance(reply, Held):
                held.extend(reply.rids)
            else:
                short.extend(ShortLine(s.sku, s.requested, s.available) for s in reply.lines)
        if short:
            return OutOfStock(tuple(short), tuple(held))
        return StockHeld()

    async def commit(self, lines: tuple[StockLine, ...]) -> Ack | Rejected:
        for reply in await self.inventory.commit_many(self._holds(lines)):
            if isinstance(reply, Rejected):
                return reply
        return Ack()

    async def release(self, lines: tuple[StockLine, ...]) -> Ack:
        await self.inventory.release_many(self._holds(lines))
        return Ack()

    async def restock(self, lines: tuple[StockLine, ...]) -> Ack:
        for reply in await self.inventory.return_many(self._holds(lines)):
            if isinstance(reply, Rejected):
                raise RuntimeError(f"restock refused: {reply.code}")
        return Ack()


# --- pricing (tables, coupons, product facts) -----------------------------------------------
# Loaded through ``cluster.adapters.pricing_store`` (the one loader); only the pure
# ``quote`` decides prices.

TABLES_TTL_S = 5.0
# Product facts pricing needs (category, weight) are kept as long as the tables, for
# at most this many SKUs (least recently used leave first).
FACTS_MAX = 10_000


class PricingAdapter:
    """Server-side price of a cart snapshot, and atomic coupon redemption.

    The promotion, shipping and tax tables and each product's facts (category,
    weight) are read from PostgreSQL at most once per ``TABLES_TTL_S``: a change
    reaches checkout within that time (the cart's unit prices come from the cart).
    """

    def __init__(self, open_pool: OpenPool, clock: Clock) -> None:
        self.open_pool = open_pool
        self.clock = clock
        self._tables: pricing_store.Tables | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._facts: OrderedDict[str, tuple[pricing_store.ProductFacts, int]] = OrderedDict()
        self.facts_loads = 0

    async def _product_facts(
        self, db: Any, skus: list[str], now_ms: int
    ) -> dict[str, pricing_store.ProductFacts]:
        """Facts of ``skus`` (those that exist), from memory unless older than the TTL."""
        found: dict[str, pricing_store.ProductFacts] = {}
        missing = []
        for sku in skus:
            cached = self._facts.get(sku)
            if cached is not None and cached[1] > now_ms:
                self._facts.move_to_end(sku)
                found[sku] = cached[0]
            else:
                missing.append(sku)
        if missing:
            self.facts_loads += 1
            expires = now_ms + int(TABLES_TTL_S * 1000)
            for sku, (facts, _available) in (
                await pricing_store.load_products(db, missing)
            ).items():
                found[sku] = facts
                self._facts[sku] = (facts, expires)
                self._facts.move_to_end(sku)
            while len(self._facts) > FACTS_MAX:
                self._facts.popitem(last=False)
        return found

    async def _current_tables(self, db: Any, now: int) -> pricing_store.Tables:
        async with self._lock:
            if self._tables is None or time.monotonic() >= self._expires:
                self._tables = await pricing_store.load_tables(db, now)
                self._expires = time.monotonic() + TABLES_TTL_S
            return self._tables

    async def price(
        self,
        cart: CartSnapshot,
        user_id: str,
        shipping_method: str,
        country: str,
        state: str,
        postal_code: str,
    ) -> Priced | Rejected:
        if not cart.lines:
            return Rejected("empty-cart", "The cart is empty.")
        db = await self.open_pool()
        now_ms = self.clock()
        now = now_ms // 1000
        products = await self._product_facts(db, [x.sku for x in cart.lines], now_ms)
        tables = await self._current_tables(db, now)
        coupons: dict[str, Coupon] = {}
        if cart.coupon is not None:
            coupon = await pricing_store.coupon_with_uses(db, cart.coupon, user_id)
            if coupon is not None:
                coupons[coupon.code] = coupon
        lines = []
        for x in cart.lines:
            facts = products.get(x.sku)
            category = facts.category if facts else ""
            weight_g = facts.weight_g if facts else pricing_store.DEFAULT_WEIGHT_G
            lines.append(Line(x.sku, category, x.unit_price, x.quantity, weight_g))
        quoted = quote(
            lines,
            tables.promotions,
            cart.coupon,
            coupons,
            user_id,
            shipping_method,
            Destination(country, state, postal_code),
            tables.rates,
            tables.tax_rules,
            now,
        )
        if not isinstance(quoted, Quote):
            return quoted
        names = {x.sku: x.name for x in cart.lines}
        return Priced(
            lines=tuple(
                PricedLine(q.sku, names.get(q.sku, q.sku), q.quantity, q.unit_price, q.line_total)
                for q in quoted.lines
            ),
            subtotal=quoted.subtotal,
            discount_total=quoted.discount_total,
            shipping=quoted.shipping.amount if quoted.shipping else 0,
            tax=quoted.tax,
            total=quoted.total,
            coupon=quoted.coupon,
        )

    async def redeem(self, code: str, user_id: str, order_id: str) -> Ack | Rejected:
        """One use of ``code`` by this order, only while under both limits; idempotent."""
        try:
            return await self._redeem(code, user_id, order_id)
        except _Refused as refused:  # raised inside the transaction so that it rolls back
            return refused.rejected

    async def _redeem(self, code: str, user_id: str, order_id: str) -> Ack | Rejected:
        db = await self.open_pool()
        async with db.acquire() as conn, conn.transaction():
            if await conn.fetchval(
                "SELECT 1 FROM coupon_uses WHERE code = $1 AND order_id = $2", code, order_id
            ):
                return Ack()
            # The conditional UPDATE locks the coupon's row: concurrent redemptions of
            # one code serialize here, so both counts below are read under the lock.
            counted = await conn.fetchrow(
                "UPDATE coupons SET uses_total = uses_total + 1 WHERE code = $1"
                " AND (data->>'max_uses_total' IS NULL"
                "      OR uses_total < (data->>'max_uses_total')::int)"
                " RETURNING (data->>'max_uses_per_user')::int AS per_user",
                code,
            )
            if counted is None:
                return Rejected("coupon-exhausted", f"Coupon {code} has been used up.")
            if counted["per_user"] is not None:
                mine = await conn.fetchval(
                    "SELECT count(*) FROM coupon_uses WHERE code = $1 AND user_id = $2",
                    code,
                    user_id,
                )
                if mine >= counted["per_user"]:
                    raise _Refused(
                        Rejected("coupon-user-limit", f"You have used coupon {code} already.")
                    )
            await conn.execute(
                "INSERT INTO coupon_uses (code, user_id, order_id) VALUES ($1, $2, $3)",
                code,
                user_id,
                order_id,
            )
        return Ack()

    async def unredeem(self, code: str, order_id: str) -> Ack:
        """Give the order's use of ``code`` back (nothing happens when it had none)."""
        db = await self.open_pool()
        async with db.acquire() as conn, conn.transaction():
            if await conn.fetchval(
                "DELETE FROM coupon_uses WHERE code = $1 AND order_id = $2 RETURNING 1",
                code,
                order_id,
            ):
                await conn.execute(
                    "UPDATE coupons SET uses_total = greatest(uses_total - 1, 0) WHERE code = $1",
                    code,
                )
        return Ack()


class _Refused(Exception):
    """Rolls the redemption's transaction back and carries the refusal out of it."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(rejected.code)
        self.rejected = rejected


# --- fraud ------------------------------------------------------------------------------------


class ServeFraudModel:
    """The ``FraudScorer`` Serve deployment, reached by name (cluster never imports serve).

    The handle is looked up once, off the event loop (the lookup asks Serve's
    controller); until it is known, and whenever a call fails, the caller falls
    back to the rules.
    """

    def __init__(self, app_name: str = SERVE_APP_NAME, deployment: str = FRAUD_DEPLOYMENT) -> None:
        self.app_name, self.deployment = app_name, deployment
        self._handle: Any = None
        self._lookup: asyncio.Future[Any] | None = None

    def _get_handle(self) -> Any:
        from ray import serve

        return serve.get_deployment_handle(self.deployment, app_name=self.app_name)

    async def handle(self) -> Any:
        if self._handle is not None:
            return self._handle
        if self._lookup is None or self._lookup.done():
            self._lookup = asyncio.get_running_loop().run_in_executor(None, self._get_handle)
        self._handle = await asyncio.shield(self._lookup)
        return self._handle

    async def __call__(self, facts: dict[str, Any]) -> dict[str, Any]:
        handle = await self.handle()
        try:
            answer: dict[str, Any] = await handle.score.remote(facts)
        except Exception:
            self._handle = None  # look the deployment up again next time
            raise
        return answer


FraudModelCall = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# The shopper's account age and order history (the current order left out), in one query.
_FRAUD_FACTS = (
    "SELECT (SELECT extract(epoch FROM created_at)::bigint FROM users WHERE user_id = $1)"
    " AS created,"
    " count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS hour,"
    " count(DISTINCT data->'request'->'payment'->>'token') AS tokens,"
    " (SELECT coalesce(sum(line.quantity), 0)::bigint FROM unnest($3::text[], $4::bigint[])"
    " AS line(sku, quantity) JOIN products p ON p.sku = line.sku"
    " WHERE p.category = ANY($5::text[])) AS resale"
    " FROM orders WHERE user_id = $1 AND order_id <> $2"
    " AND created_at > now() - interval '30 days'"
)


class FraudAdapter:
    """Facts about the shopper from PostgreSQL, scored by the model, else by the rules.

    With a ``model`` (the ``FraudScorer`` deployment), its decision stands when it
    answers within ``budget_ms``; on a timeout or an error the rules decide
    (``reasons`` then include ``model-unavailable``). The model's score is its
    fraud probability in percent.

    The first call to a deployment from a new process costs seconds (handle
    lookup, router set-up), so the shard calls ``warm`` at start: it calls the
    model until it answers (the deployment may come up after the shard). An
    order that arrives while the first warm-up call is in flight waits for it
    (up to ``COLD_BUDGET_S``); once that call has failed, orders go to the rules
    at once while the warm-up keeps retrying in the background.
    """

    def __init__(
        self,
        open_pool: OpenPool,
        clock: Clock,
        review_at: int,
        block_at: int,
        model: FraudModelCall | None = None,
        budget_ms: int = 30,
    ) -> None:
        self.open_pool = open_pool
        self.clock = clock
        self.review_at, self.block_at = review_at, block_at
        self.model = model
        self.budget_s = budget_ms / 1000
        self.model_answers = 0
        self.fallbacks = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._warm_task: asyncio.Task[None] | None = None
        self._ready = False  # the model has answered once: calls get the plain budget
        self._tried: asyncio.Event | None = None  # set once the first warm-up call ended

    def _warming(self) -> asyncio.Task[None]:
        if self._warm_task is None:
            self._tried = asyncio.Event()
            self._warm_task = asyncio.get_running_loop().create_task(self._warm_up())
        return self._warm_task

    async def _warm_up(self) -> None:
        assert self.model is not None and self._tried is not None
        delay = 0.2
        while True:
            try:
                await asyncio.wait_for(self.model(WARM_FACTS), COLD_BUDGET_S)
            except Exception as exc:  # not deployed yet, or starting: try again
                log.info("fraud model not reachable yet (%s); retrying", type(exc).__name__)
                self._tried.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)  # the deployment is usually seconds away
                continue
            self._ready = True
            self._tried.set()
            return

    async def warm(self) -> None:
        """Reach the model before the first order needs it; returns once it has answered."""
        if self.model is not None:
            await asyncio.shield(self._warming())

    def stats(self) -> dict[str, Any]:
        """Model answers, fallbacks and the model call's latency over the last calls."""
        window = sorted(self._latencies)

        def pct(q: float) -> float | None:
            return round(window[int(q * (len(window) - 1))] * 1000, 2) if window else None

        return {
            "model": self.model is not None,
            "ready": self._ready,
            "model_answers": self.model_answers,
            "fallbacks": self.fallbacks,
            "model_ms_p50": pct(0.50),
            "model_ms_p95": pct(0.95),
            "budget_ms": round(self.budget_s * 1000),
        }

    def _record(self, started: float, call: asyncio.Future[Any]) -> None:
        self._latencies.append(time.perf_counter() - started)
        if not call.cancelled():
            call.exception()  # retrieved: a late failure is already counted as a fallback

    async def _wait_first_try(self) -> bool:
        """Whether the model is ready, after waiting for an in-flight first warm-up call."""
        if self._ready:
            return True
        self._warming()
        assert self._tried is not None
        if not self._tried.is_set():
            try:
                await asyncio.wait_for(self._tried.wait(), COLD_BUDGET_S)
            except TimeoutError:
                return False
        return self._ready

    async def facts(
        self,
        order_id: str,
        user_id: str,
        total: int,
        quantities: tuple[int, ...],
        country: str,
        skus: tuple[str, ...] = (),
        shipping_method: str = "standard",
    ) -> dict[str, Any]:
        """The raw facts both the model and the rules score (serve.models.features.RAW_SCHEMA)."""
        db = await self.open_pool()
        async with db.acquire() as conn:  # one round trip: the account, its history, the lines
            history = await conn.fetchrow(
                _FRAUD_FACTS,
                user_id,
                order_id,
                list(skus),
                [int(q) for q in quantities[: len(skus)]],
                list(RESALE_CATEGORIES),
            )
        created = history["created"] if history else None
        now_s = self.clock() // 1000
        return {
            "total": int(total),
            "units": int(sum(quantities)),
            "max_units_one_sku": int(max(quantities, default=0)),
            "n_lines": len(quantities),
            "country": country,
            "account_age_s": max(0, now_s - int(created or 0)),
            "orders_last_hour": int(history["hour"] or 0) if history else 0,
            "tokens_30d": int(history["tokens"] or 0) if history else 0,
            "hour": int(now_s // 3600 % 24),
            "express": int(shipping_method == "express"),
            "resale_units": int(history["resale"] or 0) if history else 0,
        }

    async def screen(
        self,
        order_id: str,
        user_id: str,
        total: int,
        quantities: tuple[int, ...],
        country: str,
        skus: tuple[str, ...] = (),
        shipping_method: str = "standard",
    ) -> Screening:
        raw = await self.facts(order_id, user_id, total, quantities, country, skus, shipping_method)
        rules = screen(
            FraudFacts(
                total=raw["total"],
                max_units_one_sku=raw["max_units_one_sku"],
                units=raw["units"],
                country=country,
                account_age_s=raw["account_age_s"],
                orders_last_hour=raw["orders_last_hour"],
            ),
            self.review_at,
            self.block_at,
        )
        if self.model is None:
            return rules
        try:
            if not await self._wait_first_try():
                raise ConnectionError("the fraud model has not answered yet")
            # A late answer is not cancelled, only ignored: its latency is still recorded,
            # so the stats show what the budget cut off.
            call = asyncio.ensure_future(self.model(raw))
            call.add_done_callback(partial(self._record, time.perf_counter()))
            verdict = await asyncio.wait_for(asyncio.shield(call), self.budget_s)
            decision = str(verdict["decision"])
            if decision not in ("pass", "review", "block"):
                raise ValueError(f"unknown decision {decision!r}")
            score = round(float(verdict["score"]) * 100)
        except Exception as exc:
            self.fallbacks += 1
            log.warning(
                "fraud model unavailable (%s); screening with the rules", type(exc).__name__
            )
            return Screening(rules.score, rules.decision, (*rules.reasons, "model-unavailable"))
        self.model_answers += 1
        version = str(verdict.get("version", ""))
        return Screening(min(100, max(0, score)), decision, (f"model:{version}", *rules.reasons))


# --- payments ----------------------------------------------------------------------------------


class PaymentsAdapter:
    """Card (Stripe-compatible) and Pix; the order id is every payment's idempotency key."""

    def __init__(
        self,
        open_pool: OpenPool,
        clock: Clock,
        *,
        stripe_api_base: str,
        stripe_api_key: Any,
        pix_api_base: str,
        pix_expiry_s: int,
        webhook_url: str,
    ) -> None:
        self.open_pool = open_pool
        self.clock = clock
        self._stripe = (stripe_api_base, stripe_api_key)
        self._pix_base = pix_api_base
        self.pix_expiry_s = pix_expiry_s
        self.webhook_url = webhook_url
        self._card: StripeCardGateway | None = None
        self._pix: PixGateway | None = None

    async def card(self) -> StripeCardGateway:
        if self._card is None:
            self._card = StripeCardGateway(await self.open_pool(), *self._stripe)
        return self._card

    async def pix(self) -> PixGateway:
        if self._pix is None:
            self._pix = PixGateway(
                await self.open_pool(),
                self._pix_base,
                give_up_after_s=self.pix_expiry_s + PIX_UNCONFIRMED_MAX_S,
            )
        return self._pix

    async def charge(self, key: str, amount: int, currency: str, token: str) -> Charge:
        charge = await (await self.card()).charge(
            key, amount, currency, token, f"Agora order {key}"
        )
        if charge.status == "failed":
            raise PaymentUnavailable(charge.message or "payment provider unavailable")
        return charge

    async def open_pix(self, key: str, amount: int) -> PixCharge:
        expires_at = self.clock() // 1000 + self.pix_expiry_s
        pix = await (await self.pix()).create_charge(key, amount, expires_at, self.webhook_url)
        return PixCharge(pix["txid"], pix["br_code"], int(pix["expires_at"]), int(pix["amount"]))

    async def pix_paid(self, key: str, amount: int) -> bool:
        outcome = await (await self.pix()).mark_paid(key, amount)
        if outcome == "already-recorded":  # a retried webhook: the first answer never landed
            log.info("pix payment %s was already recorded (%d): a retry", key, amount)
        return outcome != "refused"

    async def expire_pix(self, key: str, amount: int) -> PixPaid | PixExpired:
        outcome = await (await self.pix()).expire(key, amount)
        if outcome == "paid":  # the webhook never reached a live shard: paid all the same
            log.warning(
                "pix payment %s (%d) found at its expiry: the order records it", key, amount
            )
            return PixPaid(amount)
        if outcome == "unknown":  # the PSP cannot say it was not paid: the next sweep asks
            raise PaymentUnavailable(f"pix charge {key}: the PSP has not confirmed it unpaid")
        if outcome == "refused":  # e.g. another amount recorded: the order expires, as before
            log.error("pix charge %s is neither pending nor paid with %d: expiring", key, amount)
        return PixExpired()

    async def refund(self, key: str, method: str, payment_id: str | None, amount: int) -> Refund:
        if method == "pix" or payment_id is None:
            # Pix refunds (devolução) go through the PSP's own flow; recorded for operators.
            return Refund("manual", None, amount)
        refund = await (await self.card()).refund(f"{key}:refund", payment_id, amount)
        if refund.status != "succeeded":
            raise PaymentUnavailable("refund not confirmed by the provider yet")
        return refund

    async def void(self, key: str, method: str) -> Ack:
        """A charge whose outcome was never learned: settle it as declined, or refund it."""
        if method == "pix":
            await (await self.pix()).mark_expired(key)
            return Ack()
        outcome = await (await self.card()).void(key)
        if outcome is not None:
            await self.refund(key, "card", outcome.payment_id, outcome.amount)
        return Ack()


def order_ports(
    settings: Any, open_pool: OpenPool, directory: Any, clock: Clock, urls: Any
) -> Ports:
    """The saga's ports for one order shard process (``cluster.bootstrap`` calls this)."""
    return Ports(
        carts=CartsAdapter(CartClient(directory)),
        stock=StockAdapter(
            InventoryClient(directory),
            settings.reservation_ttl_s,
            max(settings.reservation_ttl_s, settings.pix_expiry_s + 300),
        ),
        pricing=PricingAdapter(open_pool, clock),
        fraud=FraudAdapter(
            open_pool,
            clock,
            settings.fraud_review_score,
            settings.fraud_block_score,
            model=ServeFraudModel() if settings.models_enabled else None,
            budget_ms=settings.fraud_model_budget_ms,
        ),
        payments=PaymentsAdapter(
            open_pool,
            clock,
            stripe_api_base=urls.stripe,
            stripe_api_key=settings.stripe_api_key,
            pix_api_base=urls.pix,
            pix_expiry_s=settings.pix_expiry_s,
            webhook_url=f"http://{settings.http_host}:{settings.http_port}"
            "/v1/payments/webhooks/pix",
        ),
    )
