"""Pricing inputs from PostgreSQL for the pure engine in ``actors.pricing``.

What is read how
  * Promotions (those not yet ended), shipping rates and tax rules are read in
    bulk and cached per API replica for ``TABLES_TTL_S`` (5 s): an operator's
    change reaches every replica within that window (at once on the replica
    that took the change, which calls ``invalidate``).
  * Coupons are read by code on every quote (a primary-key lookup), so a new
    coupon works at once, an expired or used-up one stops at once, and the
    usage counts (``coupons.uses_total``; ``coupon_uses`` for per-user limits)
    are current.
  * Product category and weight (for category promotions, tax and shipping)
    come from ``products``; a cart line whose product has since been removed
    prices with no category and ``DEFAULT_WEIGHT_G``.

Storage form
  ``promotions.data`` and ``coupons.data`` hold the engine's admin-input form
  (``promotion_doc`` / ``coupon_doc``: only the fields the kind uses, times in
  epoch seconds), and every load runs it through ``validate_promotion`` /
  ``validate_coupon`` again, so a row edited by hand into something invalid is
  skipped (and logged) rather than mispriced.

``db`` parameters take an asyncpg pool or connection (anything with
``fetch``/``fetchrow``/``fetchval``/``execute``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from actors.pricing.engine import (
    Coupon,
    Destination,
    Line,
    Promotion,
    Quote,
    Rejected,
    ShippingRate,
    TaxRule,
    quote,
    validate_coupon,
    validate_promotion,
)

log = logging.getLogger(__name__)

TABLES_TTL_S = 5.0
DEFAULT_WEIGHT_G = 500


@dataclass(frozen=True)
class Tables:
    """The bulk pricing rules: promotions still running or to come, rates, tax rules."""

    promotions: tuple[Promotion, ...]
    rates: tuple[ShippingRate, ...]
    tax_rules: tuple[TaxRule, ...]


@dataclass(frozen=True)
class ProductFacts:
    """What pricing and the cart need about a product beyond the cart line."""

    category: str
    weight_g: int
    available: int


# --- storage form -------------------------------------------------------------------


def promotion_doc(promotion: Promotion) -> dict[str, Any]:
    """A promotion in admin-input form (``validate_promotion`` gives it back unchanged)."""
    doc: dict[str, Any] = {"id": promotion.id, "kind": promotion.kind, "target": promotion.target}
    if promotion.target != "cart":
        doc["target_value"] = promotion.target_value
    if promotion.kind in ("percentage", "fixed"):
        doc["value"] = promotion.value
    elif promotion.kind == "buy_x_pay_y":
        doc["buy"], doc["pay"] = promotion.buy, promotion.pay
    else:
        doc["tiers"] = [list(t) for t in promotion.tiers]
    doc.update(
        starts_at=promotion.starts_at,
        ends_at=promotion.ends_at,
        stackable=promotion.stackable,
        priority=promotion.priority,
    )
    if promotion.label:
        doc["label"] = promotion.label
    return doc


def coupon_doc(coupon: Coupon) -> dict[str, Any]:
    """A coupon in admin-input form (no usage counts: those are columns and rows)."""
    doc: dict[str, Any] = {
        "code": coupon.code,
        "kind": coupon.kind,
        "value": coupon.value,
        "starts_at": coupon.starts_at,
        "ends_at": coupon.ends_at,
        "min_subtotal": coupon.min_subtotal,
        "stackable": coupon.stackable,
    }
    if coupon.max_uses_total is not None:
        doc["max_uses_total"] = coupon.max_uses_total
    if coupon.max_uses_per_user is not None:
        doc["max_uses_per_user"] = coupon.max_uses_per_user
    if coupon.label:
        doc["label"] = coupon.label
    return doc


def normalise_code(code: str) -> str:
    """Coupon codes are case-insensitive and stored upper-cased."""
    return code.strip().upper()


# --- loading ----------------------------------------------------------------------


async def load_tables(db: Any, now: int | None = None) -> Tables:
    """Read promotions not yet ended, every shipping rate and every tax rule."""
    now = int(time.time()) if now is None else now
    promotion_rows = await db.fetch(
        "SELECT id, data FROM promotions WHERE (data->>'ends_at')::bigint > $1 ORDER BY id", now
    )
    promotions = []
    for row in promotion_rows:
        checked = validate_promotion(row["data"])
        if isinstance(checked, Rejected):
            log.warning("skipping invalid promotion %s: %s", row["id"], checked.detail)
            continue
        promotions.append(checked)
    rate_rows = await db.fetch(
        "SELECT method, region, base, per_kg, free_over, days FROM shipping_rates"
        " ORDER BY method, region"
    )
    tax_rows = await db.fetch(
        "SELECT region, category, rate_bp FROM tax_rules ORDER BY region, category"
    )
    rates = tuple(
        ShippingRate(
            method=r["method"],
            region=r["region"],
            base=int(r["base"]),
            per_kg=int(r["per_kg"]),
            free_over=None if r["free_over"] is None else int(r["free_over"]),
            days=r["days"],
        )
        for r in rate_rows
    )
    tax_rules = tuple(TaxRule(r["region"], r["category"], r["rate_bp"]) for r in tax_rows)
    return Tables(promotions=tuple(promotions), rates=rates, tax_rules=tax_rules)


class TablesCache:
    """``load_tables`` behind a per-replica TTL; one load at a time refreshes it."""

    def __init__(self, ttl_s: float = TABLES_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._value: Tables | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> Tables | None:
        if self._value is not None and time.monotonic() < self._expires:
            return self._value
        return None

    async def get(self, db: Any) -> Tables:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            value = await load_tables(db)
            self._value, self._expires = value, time.monotonic() + self.ttl_s
            return value

    def invalidate(self) -> None:
        self._expires = 0.0


TABLES = TablesCache()


async def load_coupon(db: Any, code: str, user_id: str | None) -> Coupon | None:
    """The coupon under ``code`` with its usage counts (the caller's own, for per-user limits)."""
    key = normalise_code(code)
    row = await db.fetchrow("SELECT data, uses_total FROM coupons WHERE code = $1", key)
    if row is None:
        return None
    checked = validate_coupon(row["data"])
    if isinstance(checked, Rejected):
        log.warning("skipping invalid coupon %s: %s", key, checked.detail)
        return None
    uses_by_user: dict[str, int] = {}
    if checked.max_uses_per_user is not None and user_id is not None:
        used = await db.fetchval(
            "SELECT count(*) FROM coupon_uses WHERE code = $1 AND user_id = $2", key, user_id
        )
        uses_by_user[user_id] = int(used)
    return replace(checked, uses_total=row["uses_total"], uses_by_user=uses_by_user)


async def product_facts(db: Any, skus: Sequence[str]) -> dict[str, ProductFacts]:
    """Category, weight and available units (on hand minus reserved) per SKU."""
    if not skus:
        return {}
    rows = await db.fetch(
        "SELECT p.sku, p.category, p.weight_g, COALESCE(i.on_hand - i.reserved, 0) AS available"
        " FROM products p LEFT JOIN inventory i USING (sku) WHERE p.sku = ANY($1::text[])",
        list(skus),
    )
    return {r["sku"]: ProductFacts(r["category"], r["weight_g"], r["available"]) for r in rows}


def cart_lines(view: Mapping[str, Any], facts: Mapping[str, ProductFacts]) -> list[Line]:
    """The cart shard's view lines as engine ``Line``s (prices as snapshotted in the cart)."""
    lines = []
    for line in view["lines"]:
        fact = facts.get(line["sku"])
        lines.append(
            Line(
                sku=line["sku"],
                category=fact.category if fact is not None else "",
                unit_price=int(line["unit_price"]),
                quantity=int(line["quantity"]),
                weight_g=fact.weight_g if fact is not None else DEFAULT_WEIGHT_G,
            )
        )
    return lines


async def cart_quote(
    db: Any,
    view: Mapping[str, Any],
    coupon_code: str | None,
    user_id: str | None,
    shipping_method: str | None = None,
    destination: Destination | None = None,
    now: int | None = None,
    facts: Mapping[str, ProductFacts] | None = None,
) -> Quote | Rejected:
    """Price a cart view (``lines`` of sku/name/unit_price/quantity) at ``now`` (epoch s).

    ``facts`` saves a query when the caller has already read ``product_facts``.
    """
    now = int(time.time()) if now is None else now
    if facts is None:
        facts = await product_facts(db, [line["sku"] for line in view["lines"]])
    tables = await TABLES.get(db)
    coupons: dict[str, Coupon] = {}
    if coupon_code is not None:
        coupon = await load_coupon(db, coupon_code, user_id)
        if coupon is not None:
            coupons[coupon.code] = coupon
    return quote(
        cart_lines(view, facts),
        tables.promotions,
        coupon_code=coupon_code,
        coupons=coupons,
        user_id=user_id,
        shipping_method=shipping_method,
        destination=destination,
        rates=tables.rates,
        tax_rules=tables.tax_rules,
        now=now,
    )


# --- the coupon a cart holds ----------------------------------------------------------


async def cart_coupon(db: Any, cart_id: str) -> str | None:
    """The code stored for ``cart_id``, if any."""
    code = await db.fetchval("SELECT code FROM cart_coupons WHERE cart_id = $1", cart_id)
    return None if code is None else str(code)


async def set_cart_coupon(db: Any, cart_id: str, code: str) -> None:
    """Store (or replace) the cart's coupon; the code must exist in ``coupons``."""
    await db.execute(
        "INSERT INTO cart_coupons (cart_id, code) VALUES ($1, $2)"
        " ON CONFLICT (cart_id) DO UPDATE SET code = EXCLUDED.code, applied_at = now()",
        cart_id,
        normalise_code(code),
    )


async def clear_cart_coupon(db: Any, cart_id: str) -> None:
    """Forget the cart's coupon (nothing happens when it has none)."""
    await db.execute("DELETE FROM cart_coupons WHERE cart_id = $1", cart_id)
