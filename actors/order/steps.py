"""What the checkout saga talks to, wired once per order shard: carts, pricing,
fraud screening, inventory shards and the payment gateway.

Each ``after_<step>`` method does the work that follows a persisted step and
moves the order to its next step (or to ``failed`` after compensating). Every
call it makes is idempotent (reservation ids, the order id as the payment key),
so a step retried after a crash or a restart repeats nothing.
"""

from __future__ import annotations

import time
from typing import Any

from actors.fraud.rules import FraudFacts, screen
from actors.order.model import Order
from actors.pricing.engine import Destination, Quote
from cluster.settings import Settings
from streams.events import Envelope


class SagaDependencies:
    def __init__(self, settings: Settings, pool: Any) -> None:
        from cluster.bootstrap import shard_directory

        self.settings = settings
        self.pool = pool
        self.directory = shard_directory(settings)
        self._gateway: Any = None
        self._pix: Any = None

    def gateway(self) -> Any:
        if self._gateway is None:
            from cluster.adapters.stripe_card import StripeCardGateway
            from cluster.services import service_urls

            self._gateway = StripeCardGateway(
                self.pool, service_urls(self.settings).stripe, self.settings.stripe_api_key
            )
        return self._gateway

    def _inventory(self, sku: str) -> Any:
        return self.directory.get("inventory", sku)

    async def after_created(self, order: Order, now_ms: int) -> list[Envelope]:
        """Snapshot the cart and price it on the server."""
        from serve.pricing_service import cart_coupon, cart_quote

        view = await self.directory.get("cart", order.cart_id).get.remote(order.cart_id)
        if not view["lines"]:
            return order.failed("empty-cart", "The cart is empty.", now_ms)
        address = order.request["shipping_address"]
        destination = Destination(
            address["country"], address.get("state") or "", address["postal_code"]
        )
        coupon = await cart_coupon(self.pool, order.cart_id)
        quote = await cart_quote(
            self.pool, view, coupon, order.user_id, order.request["shipping_method"], destination
        )
        if not isinstance(quote, Quote):
            return order.failed(quote.code, quote.detail, now_ms)
        names = {line["sku"]: line["name"] for line in view["lines"]}
        lines = [
            {"sku": q.sku, "name": names.get(q.sku, q.sku), "quantity": q.quantity,
             "unit_price": q.unit_price, "line_total": q.line_total}
            for q in quote.lines
        ]  # fmt: skip
        totals = {
            "subtotal": quote.subtotal,
            "discount_total": quote.discount_total,
            "shipping": quote.shipping.amount if quote.shipping else 0,
            "tax": quote.tax,
            "total": quote.total,
            "currency": "BRL",
            "coupon": quote.coupon,
        }
        order.priced(lines, totals, now_ms)
        return []

    async def after_priced(self, order: Order, now_ms: int) -> list[Envelope]:
        """Fraud screening: pass, hold for review, or block."""
        async with self.pool.acquire() as conn:
            created = await conn.fetchval(
                "SELECT extract(epoch FROM created_at)::bigint FROM users WHERE user_id = $1",
                order.user_id,
            )
            recent = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE user_id = $1 AND order_id <> $2"
                " AND created_at > now() - interval '1 hour'",
                order.user_id, order.order_id,
            )  # fmt: skip
        facts = FraudFacts(
            total=order.totals["total"],
            max_units_one_sku=max((line["quantity"] for line in order.lines), default=0),
            units=sum(line["quantity"] for line in order.lines),
            country=order.request["shipping_address"]["country"],
            account_age_s=int(time.time()) - int(created or 0),
            orders_last_hour=int(recent or 0),
        )
        result = screen(facts, self.settings.fraud_review_score, self.settings.fraud_block_score)
        if result.decision == "block":
            order.fraud = {"score": result.score, "decision": "block",
                           "reasons": list(result.reasons)}  # fmt: skip
            return order.failed("fraud-blocked", "The order was refused.", now_ms)
        return order.screened(result.score, result.decision, list(result.reasons), now_ms)

    async def after_screened(self, order: Order, now_ms: int) -> list[Envelope]:
        """Reserve every line (idempotent by reservation id); all or nothing."""
        held: dict[str, str] = {}
        short = []
        for line in order.lines:
            rid = f"{order.order_id}:{line['sku']}"
            reply = await self._inventory(line["sku"]).reserve.remote(
                line["sku"], rid, line["quantity"], self._hold_s(order), order.order_id
            )
            if reply["ok"]:
                held[line["sku"]] = rid
            else:
                short.append({"sku": line["sku"], "requested": line["quantity"],
                              "available": max(0, reply.get("available") or 0)})  # fmt: skip
        if short:
            await self._release(held)
            return order.failed("out-of-stock", "Some lines are not in stock.", now_ms,
                                lines=short)  # fmt: skip
        order.reserved(held, now_ms)
        return []

    def _hold_s(self, order: Order) -> int:
        """How long stock is held: a Pix order holds it past the charge's expiry."""
        s = self.settings
        if order.request["payment"]["method"] == "pix":
            return max(s.reservation_ttl_s, s.pix_expiry_s + 300)
        return s.reservation_ttl_s

    async def _release(self, held: dict[str, str]) -> None:
        for sku, rid in held.items():
            await self._inventory(sku).release.remote(sku, rid)

    def pix(self) -> Any:
        if self._pix is None:
            from cluster.adapters.pix_gateway import PixGateway
            from cluster.services import service_urls

            self._pix = PixGateway(self.pool, service_urls(self.settings).pix)
        return self._pix

    async def pix_paid(self, order: Order, amount: int) -> bool:
        return bool(await self.pix().mark_paid(order.order_id, amount))

    async def expire_pix(self, order: Order) -> None:
        await self.pix().mark_expired(order.order_id)
        await self._release(order.reservations)

    async def after_reserved(self, order: Order, now_ms: int) -> list[Envelope]:
        """Charge the card (a decline releases the stock), or open a Pix charge and wait."""
        payment = order.request["payment"]
        total = order.totals["total"]
        if payment["method"] == "pix":
            s = self.settings
            charge = await self.pix().create_charge(
                order.order_id, total, now_ms // 1000 + s.pix_expiry_s,
                f"http://{s.http_host}:{s.http_port}/v1/payments/webhooks/pix",
            )  # fmt: skip
            return order.awaiting_payment(charge, now_ms)
        charge = await self.gateway().charge(
            order.order_id, total, "BRL", payment["token"], f"Agora order {order.order_id}"
        )
        if charge.status == "succeeded":
            return order.charged(
                {"payment_id": charge.payment_id, "status": "succeeded", "method": "card"},
                now_ms,
            )
        if charge.status == "declined":
            await self._release(order.reservations)
            return order.failed("payment-declined", "The card was declined.", now_ms,
                                decline_code=charge.decline_code)  # fmt: skip
        raise RuntimeError("payment provider unavailable")

    async def after_charged(self, order: Order, now_ms: int) -> list[Envelope]:
        """Commit the reservations and clear the cart; confirm the order."""
        from serve.pricing_service import clear_cart_coupon

        for sku, rid in order.reservations.items():
            reply = await self._inventory(sku).commit.remote(sku, rid)
            if not reply["ok"]:
                refund = await self.refund(order)
                order.payment = {**(order.payment or {}), "refund": refund}
                await self._release(order.reservations)
                return order.failed("reservation-expired",
                                    "Stock was released before payment completed; refunded.",
                                    now_ms)  # fmt: skip
        await self.directory.get("cart", order.cart_id).clear.remote(order.cart_id)
        await clear_cart_coupon(self.pool, order.cart_id)
        if order.totals.get("coupon"):
            await self._use_coupon(order.totals["coupon"], order)
        return order.confirmed(now_ms)

    async def _use_coupon(self, code: str, order: Order) -> None:
        """Count the coupon's use once per order (limits apply to later checkouts)."""
        async with self.pool.acquire() as conn, conn.transaction():
            used = await conn.fetchval(
                "INSERT INTO coupon_uses (code, user_id, order_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                code, order.user_id, order.order_id,
            )  # fmt: skip
            if used:
                await conn.execute(
                    "UPDATE coupons SET uses_total = uses_total + 1 WHERE code = $1", code
                )

    async def refund(self, order: Order) -> dict[str, Any]:
        assert order.payment is not None
        if order.payment.get("method") == "pix":
            # Pix refunds (devolução) go through the PSP's own flow; recorded for operators.
            return {"refund_id": None, "status": "manual", "amount": order.totals["total"]}
        refund = await self.gateway().refund(
            f"{order.order_id}:refund", order.payment["payment_id"], order.totals["total"]
        )
        return {"refund_id": refund.refund_id, "status": refund.status, "amount": refund.amount}

    async def restock(self, order: Order) -> None:
        for line in order.lines:
            await self._inventory(line["sku"]).return_units.remote(
                line["sku"], f"{order.order_id}:return:{line['sku']}", line["quantity"]
            )
