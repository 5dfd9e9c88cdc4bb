"""PostgreSQL side of pricing and the catalog: what API replicas load into memory.

Replicas hold pricing tables, coupon definitions and product facts in memory
(``serve.catalog_state``); this module is how they fill it: one bulk load at
start-up and after each ``pricing.changed`` event, and single-row loads for a
product or coupon a replica has not seen yet (a cold miss).

Storage form
  ``promotions.data`` and ``coupons.data`` hold the engine's admin-input form
  (``promotion_doc`` / ``coupon_doc``: only the fields the kind uses, times in
  epoch seconds), and every load runs it through ``validate_promotion`` /
  ``validate_coupon`` again, so a row edited by hand into something invalid is
  skipped (and logged) rather than mispriced.

Usage counts (``coupons.uses_total``, ``coupon_uses``) are not held in memory:
``coupon_with_uses`` reads them when a shopper applies a code, and checkout
counts a use atomically. ``db`` parameters take an asyncpg pool or connection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from actors.pricing.engine import (
    Coupon,
    Promotion,
    Rejected,
    ShippingRate,
    TaxRule,
    validate_coupon,
    validate_promotion,
)

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_G = 500


@dataclass(frozen=True)
class Tables:
    """The bulk pricing rules: promotions still running or to come, rates, tax rules."""

    promotions: tuple[Promotion, ...] = ()
    rates: tuple[ShippingRate, ...] = ()
    tax_rules: tuple[TaxRule, ...] = ()


@dataclass(frozen=True)
class ProductFacts:
    """A product as the product page and pricing see it (prices in minor units)."""

    sku: str
    name: str
    description: str
    category: str
    price_minor: int
    currency: str
    weight_g: int
    attributes: Any
    images: Any


@dataclass(frozen=True)
class CatalogLoad:
    """One bulk load: pricing, every coupon definition, every product, last known stock."""

    tables: Tables
    coupons: dict[str, Coupon]
    products: dict[str, ProductFacts]
    available: dict[str, int]


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

_PRODUCTS = (
    "SELECT p.sku, p.name, p.description, p.category, p.price_minor, p.currency, p.weight_g,"
    " p.attributes, p.images, COALESCE(i.on_hand - i.reserved, 0) AS available"
    " FROM products p LEFT JOIN inventory i USING (sku)"
)


def _product(row: Any) -> ProductFacts:
    return ProductFacts(
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        price_minor=int(row["price_minor"]),
        currency=row["currency"],
        weight_g=int(row["weight_g"]),
        attributes=row["attributes"],
        images=row["images"],
    )


def _coupon(data: Any, code: str) -> Coupon | None:
    checked = validate_coupon(data)
    if isinstance(checked, Rejected):
        log.warning("skipping invalid coupon %s: %s", code, checked.detail)
        return None
    return checked


async def load_tables(db: Any, now: int) -> Tables:
    """Promotions not yet ended, every shipping rate and every tax rule."""
    promotions = []
    for row in await db.fetch(
        "SELECT id, data FROM promotions WHERE (data->>'ends_at')::bigint > $1 ORDER BY id", now
    ):
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


async def load_coupons(db: Any, now: int) -> dict[str, Coupon]:
    """Every coupon not yet ended, by code (definitions only: no usage counts)."""
    coupons = {}
    for row in await db.fetch(
        "SELECT code, data FROM coupons WHERE (data->>'ends_at')::bigint > $1", now
    ):
        coupon = _coupon(row["data"], row["code"])
        if coupon is not None:
            coupons[coupon.code] = coupon
    return coupons


async def load_pricing(db: Any, now: int) -> tuple[Tables, dict[str, Coupon]]:
    """Tables and coupon definitions in one read-only transaction (a consistent snapshot)."""
    async with db.acquire() as conn, conn.transaction(readonly=True):
        return await load_tables(conn, now), await load_coupons(conn, now)


async def load_catalog(db: Any, now: int) -> CatalogLoad:
    """Everything a replica holds, read in one snapshot at start-up."""
    async with db.acquire() as conn, conn.transaction(readonly=True):
        tables = await load_tables(conn, now)
        coupons = await load_coupons(conn, now)
        rows = await conn.fetch(_PRODUCTS)
    return CatalogLoad(
        tables,
        coupons,
        {r["sku"]: _product(r) for r in rows},
        {r["sku"]: int(r["available"]) for r in rows},
    )


async def load_product(db: Any, sku: str) -> tuple[ProductFacts, int] | None:
    """One product and its last written-behind availability (a cold miss), or None."""
    row = await db.fetchrow(_PRODUCTS + " WHERE p.sku = $1", sku)
    return None if row is None else (_product(row), int(row["available"]))


async def load_products(db: Any, skus: Sequence[str]) -> dict[str, tuple[ProductFacts, int]]:
    """Several products (cold misses), by SKU."""
    rows = await db.fetch(_PRODUCTS + " WHERE p.sku = ANY($1::text[])", list(skus))
    return {r["sku"]: (_product(r), int(r["available"])) for r in rows}


async def load_coupon(db: Any, code: str) -> Coupon | None:
    """The definition under ``code`` (a cold miss), or None."""
    key = normalise_code(code)
    row = await db.fetchrow("SELECT data FROM coupons WHERE code = $1", key)
    return None if row is None else _coupon(row["data"], key)


async def coupon_with_uses(db: Any, code: str, user_id: str | None) -> Coupon | None:
    """The coupon with its current usage counts (the caller's own, for per-user limits)."""
    key = normalise_code(code)
    async with db.acquire() as conn:
        row = await conn.fetchrow("SELECT data, uses_total FROM coupons WHERE code = $1", key)
        if row is None:
            return None
        coupon = _coupon(row["data"], key)
        if coupon is None:
            return None
        uses_by_user: dict[str, int] = {}
        if coupon.max_uses_per_user is not None and user_id is not None:
            used = await conn.fetchval(
                "SELECT count(*) FROM coupon_uses WHERE code = $1 AND user_id = $2", key, user_id
            )
            uses_by_user[user_id] = int(used)
    return replace(coupon, uses_total=row["uses_total"], uses_by_user=uses_by_user)
