"""Operator routes (role ``admin``): stock, promotions, coupons and the cluster view.

No ``from __future__ import annotations``: FastAPI must see real annotations.

Promotions and coupons are validated by the pricing engine
(``actors.pricing.validate_promotion`` / ``validate_coupon``), which lists every
bad field; this layer adds RFC 3339 timestamps (epoch seconds are accepted too)
and length limits on the free-text fields.

Every change records who acted: an ``admin.action`` event for the audit log
(``serve.routers.audit.record_admin_action``).
"""

import asyncio
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import ray
from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from actors.clients import InventoryClient
from actors.messages import now_ms
from actors.pricing.engine import Coupon, FieldError, Promotion, Rejected, validate_coupon
from actors.pricing.engine import validate_promotion as engine_validate_promotion
from actors.writebehind import insert_outbox
from cluster.adapters import pricing_store
from serve.auth.principal import ADMIN, Admin
from serve.cursors import decode_cursor, page
from serve.problems import Problem, actor_call
from serve.routers.audit import record_admin_action
from serve.runtime import runtime
from serve.schemas import Input, Sku
from streams.events import PRICING_CHANGED, make_event
from streams.outbox import relay_actor_name

router = APIRouter(tags=["admin"])


class SetStock(Input):
    on_hand: Annotated[int, Field(ge=0, le=1_000_000_000)]


class AdjustStock(Input):
    delta: Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class Stock(BaseModel):
    sku: str
    on_hand: int
    reserved: int
    available: int


_STATUS = {"unknown-sku": 404, "below-reserved": 409, "invalid": 422}


async def _stock(call: Any) -> dict[str, Any]:
    reply = await actor_call(call, "Inventory")
    if isinstance(reply, Rejected):
        raise Problem(_STATUS.get(reply.code, 422), reply.code, reply.detail)
    return {k: getattr(reply, k) for k in ("sku", "on_hand", "reserved", "available")}


def _inventory() -> InventoryClient:
    return InventoryClient(runtime().directory)


@router.get("/v1/admin/inventory/{sku}", response_model=Stock, openapi_extra=ADMIN)
async def get_stock(sku: Sku, _admin: Admin) -> Any:
    """On hand, reserved and available units of one SKU."""
    await runtime().ready()
    return await _stock(_inventory().get(sku))


@router.put("/v1/admin/inventory/{sku}", response_model=Stock, openapi_extra=ADMIN)
async def set_stock(sku: Sku, body: SetStock, admin: Admin) -> Any:
    """Set on-hand stock; refused (409) below what is reserved."""
    rt = await runtime().ready()
    stock = await _stock(_inventory().set_on_hand(sku, body.on_hand))
    await record_admin_action(rt, admin, "inventory.set", sku, {"on_hand": body.on_hand})
    return stock


@router.post("/v1/admin/inventory/{sku}/adjust", response_model=Stock, openapi_extra=ADMIN)
async def adjust_stock(sku: Sku, body: AdjustStock, admin: Admin) -> Any:
    """Add (positive delta) or remove stock with a reason; never below what is reserved."""
    rt = await runtime().ready()
    stock = await _stock(_inventory().adjust(sku, body.delta, body.reason))
    details = {"delta": body.delta, "reason": body.reason, "on_hand": stock["on_hand"]}
    await record_admin_action(rt, admin, "inventory.adjust", sku, details)
    return stock


# --- promotions and coupons -------------------------------------------------------

MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_INT = 10**12  # no price, count or priority needs more; keeps jsonb and bigint casts safe
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_LIMITS = {"target_value": 64, "label": 200}


class PromotionView(BaseModel):
    id: str
    kind: str = Field(description="percentage, fixed, buy_x_pay_y or tier")
    target: str = Field(description="sku, category or cart")
    target_value: str | None = None
    value: int | None = Field(default=None, description="basis points or centavos per unit")
    buy: int | None = None
    pay: int | None = None
    tiers: list[list[int]] | None = Field(default=None, description="[[min_quantity, bp], ...]")
    starts_at: str
    ends_at: str = Field(description="exclusive")
    stackable: bool
    priority: int
    label: str | None = None
    created_at: str


class CouponView(BaseModel):
    code: str
    kind: str = Field(description="percentage or fixed")
    value: int = Field(description="basis points, or centavos off the order")
    starts_at: str
    ends_at: str = Field(description="exclusive")
    min_subtotal: int
    max_uses_total: int | None = None
    max_uses_per_user: int | None = None
    stackable: bool
    label: str | None = None
    uses_total: int
    created_at: str


class PromotionPage(BaseModel):
    items: list[PromotionView]
    next_cursor: str | None


class CouponPage(BaseModel):
    items: list[CouponView]
    next_cursor: str | None


def _rfc3339(value: int | datetime) -> str:
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _epoch(value: Any) -> int | FieldError | None:
    """An admin timestamp (RFC 3339 with an offset, or epoch seconds) in epoch seconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value) if len(value) <= 40 else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            return FieldError("", "must be an RFC 3339 timestamp with an offset, or epoch seconds")
        return int(parsed.timestamp())
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TIME:
        return FieldError("", f"must be at most {MAX_TIME} (epoch seconds)")
    return None


def _prepare(data: Mapping[str, Any], id_field: str) -> tuple[dict[str, Any], list[FieldError]]:
    """Times to epoch seconds and the limits the engine leaves open, as field errors."""
    prepared = dict(data)
    errors: list[FieldError] = []
    for name in ("starts_at", "ends_at"):
        converted = _epoch(prepared.get(name))
        if isinstance(converted, FieldError):
            errors.append(FieldError(name, converted.message))
            prepared.pop(name)
        elif converted is not None:
            prepared[name] = converted
    for name, value in prepared.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            errors.append(FieldError(name, f"must be at most {MAX_INT} in size"))
    raw_id = prepared.get(id_field)
    if isinstance(raw_id, str) and raw_id.strip() and not _ID.fullmatch(raw_id.strip()):
        errors.append(FieldError(id_field, "must be 1 to 64 letters, digits, '_', '.', ':' or '-'"))
    for name, limit in _LIMITS.items():
        value = prepared.get(name)
        if isinstance(value, str) and len(value) > limit:
            errors.append(FieldError(name, f"must be at most {limit} characters"))
    return prepared, errors


T = TypeVar("T")


def _validated(
    data: Mapping[str, Any], id_field: str, validate: Callable[[Mapping[str, Any]], T | Rejected]
) -> T:
    prepared, errors = _prepare(data, id_field)
    checked = validate(prepared)
    if isinstance(checked, Rejected):
        mine = {e.field for e in errors}
        errors += [e for e in checked.errors if e.field not in mine]
    if errors or isinstance(checked, Rejected):
        fields = [{"field": f"body.{e.field}", "message": e.message} for e in errors]
        raise Problem(422, "validation", "The request has invalid fields.", errors=fields)
    return checked


def _promotion_view(data: Mapping[str, Any], created_at: datetime) -> dict[str, Any]:
    return {
        **data,
        "starts_at": _rfc3339(data["starts_at"]),
        "ends_at": _rfc3339(data["ends_at"]),
        "created_at": _rfc3339(created_at),
    }


def _coupon_view(data: Mapping[str, Any], uses_total: int, created_at: datetime) -> dict[str, Any]:
    return {**_promotion_view(data, created_at), "uses_total": uses_total}


Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]
_PROMOTION_EXAMPLE = {
    "id": "books-10",
    "kind": "percentage",
    "target": "category",
    "target_value": "books",
    "value": 1000,
    "starts_at": "2026-01-01T00:00:00Z",
    "ends_at": "2026-02-01T00:00:00Z",
    "label": "10% off books",
}
_COUPON_EXAMPLE = {
    "code": "BEMVINDO10",
    "kind": "percentage",
    "value": 1000,
    "starts_at": "2026-01-01T00:00:00Z",
    "ends_at": "2027-01-01T00:00:00Z",
    "min_subtotal": 10000,
    "max_uses_per_user": 1,
}


@router.post(
    "/v1/admin/promotions",
    response_model=PromotionView,
    status_code=201,
    openapi_extra=ADMIN,
    responses={
        409: {"description": "a promotion with this id exists"},
        422: {"description": "invalid fields, each listed"},
    },
)
async def create_promotion(
    body: Annotated[dict[str, Any], Body(examples=[_PROMOTION_EXAMPLE])], admin: Admin
) -> Any:
    """Create an automatic promotion (applies to matching cart lines inside its window).

    Fields: `id`; `kind` (`percentage` with `value` in basis points, `fixed` with
    `value` in centavos off per unit, `buy_x_pay_y` with `buy` and `pay`, `tier` with
    `tiers` `[[min_quantity, bp], ...]`); `target` (`sku`, `category` or `cart`) and
    `target_value` (not for `cart`); `starts_at` and `ends_at` (exclusive), RFC 3339
    or epoch seconds; optional `stackable`, `priority`, `label`. Carts see it within
    about a second (every replica reloads on `pricing.changed`). An existing id is
    a 409; promotions are never overwritten.
    """
    promotion: Promotion = _validated(body, "id", engine_validate_promotion)
    doc = pricing_store.promotion_doc(promotion)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        created_at = await conn.fetchval(
            "INSERT INTO promotions (id, data) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
            " RETURNING created_at",
            promotion.id,
            doc,
        )
        if created_at is not None:
            await _pricing_changed(rt, conn, "promotion", promotion.id)
            await record_admin_action(rt, admin, "promotion.create", promotion.id, doc, conn)
    if created_at is None:
        raise Problem(409, "promotion-exists", f"A promotion with id {promotion.id!r} exists.")
    await _reload_pricing(rt)
    return _promotion_view(doc, created_at)


async def _pricing_changed(rt: Any, conn: Any, what: str, key: str) -> None:
    """``pricing.changed`` through the outbox, in the transaction of the change: every
    replica reloads its pricing tables and coupons when the relay publishes it."""
    event = make_event(PRICING_CHANGED, key, {"what": what, "id": key}, now_ms())
    s = rt.settings
    await insert_outbox(conn, [event], s.events_tenant, s.events_namespace)


async def _reload_pricing(rt: Any) -> None:
    """This replica sees its own change at once (the others within the relay's delay)."""
    if rt.catalog is not None:
        await rt.catalog.reload_pricing()


@router.get("/v1/admin/promotions", response_model=PromotionPage, openapi_extra=ADMIN)
async def list_promotions(_admin: Admin, limit: Limit = 50, cursor: Cursor = None) -> Any:
    """Every promotion (running, future and ended), ordered by id."""
    after = decode_cursor(cursor)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, data, created_at FROM promotions WHERE ($1::text IS NULL OR id > $1)"
            " ORDER BY id LIMIT $2",
            after,
            limit + 1,
        )
    rows, next_cursor = page(rows, limit, "id")
    return {
        "items": [_promotion_view(r["data"], r["created_at"]) for r in rows],
        "next_cursor": next_cursor,
    }


@router.post(
    "/v1/admin/coupons",
    response_model=CouponView,
    status_code=201,
    openapi_extra=ADMIN,
    responses={
        409: {"description": "a coupon with this code exists"},
        422: {"description": "invalid fields, each listed"},
    },
)
async def create_coupon(
    body: Annotated[dict[str, Any], Body(examples=[_COUPON_EXAMPLE])], admin: Admin
) -> Any:
    """Create a coupon code shoppers apply to their cart (one coupon per cart).

    Fields: `code` (1-64 letters, digits, `-`, `_`; case-insensitive, stored
    upper-cased); `kind` `percentage` (`value` in basis points of the subtotal after
    promotions) or `fixed` (`value` centavos off the order); `starts_at`, `ends_at`
    (exclusive), RFC 3339 or epoch seconds; optional `min_subtotal` (centavos, after
    promotions), `max_uses_total`, `max_uses_per_user` (needs a logged-in shopper),
    `stackable` (may combine with promotions; default no), `label`. An existing code
    is a 409.
    """
    coupon: Coupon = _validated(body, "code", validate_coupon)
    doc = pricing_store.coupon_doc(coupon)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        created_at = await conn.fetchval(
            "INSERT INTO coupons (code, data) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING"
            " RETURNING created_at",
            coupon.code,
            doc,
        )
        if created_at is not None:
            await _pricing_changed(rt, conn, "coupon", coupon.code)
            await record_admin_action(rt, admin, "coupon.create", coupon.code, doc, conn)
    if created_at is None:
        raise Problem(409, "coupon-exists", f"A coupon with code {coupon.code!r} exists.")
    await _reload_pricing(rt)
    return _coupon_view(doc, 0, created_at)


@router.get("/v1/admin/coupons", response_model=CouponPage, openapi_extra=ADMIN)
async def list_coupons(_admin: Admin, limit: Limit = 50, cursor: Cursor = None) -> Any:
    """Every coupon with its use count, ordered by code."""
    after = decode_cursor(cursor)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT code, data, uses_total, created_at FROM coupons"
            " WHERE ($1::text IS NULL OR code > $1) ORDER BY code LIMIT $2",
            after,
            limit + 1,
        )
    rows, next_cursor = page(rows, limit, "code")
    return {
        "items": [_coupon_view(r["data"], r["uses_total"], r["created_at"]) for r in rows],
        "next_cursor": next_cursor,
    }


@router.get("/v1/admin/cluster", openapi_extra=ADMIN)
async def cluster(_admin: Admin) -> dict[str, Any]:
    """Shards with their node, pid and flush metrics; nodes; the outbox relay."""
    rt = await runtime().ready()
    shards = []
    for kind in ("cart", "session", "inventory", "order"):
        for name in rt.directory.shard_names(kind):
            try:
                stats = await asyncio.wait_for(rt.shards.stats(name), 2)
                shards.append({"kind": kind, **stats})
            except Exception:
                shards.append({"kind": kind, "name": name, "error": "unavailable"})
    try:
        relay = ray.get_actor(relay_actor_name(), namespace=rt.settings.ray_namespace)
        outbox: Any = await asyncio.wait_for(relay.health.remote(), 3)
    except Exception:
        outbox = {"error": "unavailable"}
    nodes = [
        {"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}
        for n in ray.nodes()
    ]
    return {"shards": shards, "nodes": nodes, "outbox": outbox}
