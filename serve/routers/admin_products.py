"""Product administration: create, change and retire products (role ``admin``).

Every change is one transaction: the ``products`` row, the audit event
(``admin.action``) and ``product.created`` / ``product.updated`` /
``product.deleted`` in the outbox. Every API replica follows those events
(``serve.catalog_state``) and re-reads the product into its catalog and
search index, so an edit is on its page and in search within about the
outbox relay's poll plus one read (under a second; tests/e2e/test_products_admin.py).
Retiring keeps the row (orders refer to it): it leaves search, lists and pages.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import Field

from actors.messages import now_ms
from actors.writebehind import insert_outbox
from cluster import category_schema
from serve.auth.principal import ADMIN, Admin
from serve.problems import Problem
from serve.routers.audit import record_admin_action
from serve.runtime import Runtime, runtime
from serve.schemas import Input, Sku, money
from streams.events import PRODUCT_CREATED, PRODUCT_DELETED, PRODUCT_UPDATED, EventType, make_event

router = APIRouter(tags=["admin"])

MAX_PRICE_MINOR = 10_000_000_000
AttributeValue = Annotated[str, Field(max_length=200)] | int | float | bool
Attributes = Annotated[
    dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")], AttributeValue],
    Field(max_length=50),
]
Category = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")]


class Price(Input):
    amount: int = Field(gt=0, le=MAX_PRICE_MINOR, description="minor units (centavos)")
    currency: Literal["BRL"] = "BRL"


class NewProduct(Input):
    sku: Sku
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    category: Category
    price: Price
    attributes: Attributes = Field(default_factory=dict)
    weight_g: int | None = Field(default=None, ge=0, le=1_000_000)


class ProductChange(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    category: Category | None = None
    price: Price | None = None
    attributes: Attributes | None = None
    weight_g: int | None = Field(default=None, ge=0, le=1_000_000)


_RETURNING = (
    " RETURNING sku, name, description, category, price_minor, currency, attributes::text AS a,"
    " images::text AS i"
)


def _render(row: Any) -> dict[str, Any]:
    return {
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "category": row["category"],
        "price": money(row["price_minor"], row["currency"]),
        "attributes": json.loads(row["a"]),
        "images": json.loads(row["i"]),
        "in_stock": False,
        "rating": {"average": 0.0, "count": 0},
    }


def _conform(category: str, attributes: dict[str, Any], where: str) -> None:
    """422 naming every attribute that breaks the category's schema (cluster.category_schema)."""
    errors = category_schema.check(category, attributes, where=where)
    if errors:
        raise Problem(
            422, "validation", "The attributes do not fit the category's schema.", errors=errors
        )


async def emit_product_event(
    rt: Runtime, conn: Any, kind: EventType, sku: str, fields: list[str]
) -> None:
    s = rt.settings
    event = make_event(kind, sku, {"sku": sku, "fields": fields}, now_ms())
    await insert_outbox(conn, [event], s.events_tenant, s.events_namespace)


@router.post(
    "/v1/admin/products",
    status_code=201,
    openapi_extra=ADMIN,
    responses={409: {"description": "the SKU exists"}},
)
async def create_product(body: NewProduct, admin: Admin) -> dict[str, Any]:
    """Create a product -> 201 the product (out of stock until stock is set). ``attributes``
    must fit the category's schema (``GET /v1/admin/categories/{category}/schema``)."""
    _conform(body.category, body.attributes, "body.attributes")
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO products (sku, name, description, category, price_minor, currency,"
            " attributes, weight_g)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb,"
            "  COALESCE($8::int, product_default_weight_g($4)))"
            " ON CONFLICT (sku) DO NOTHING" + _RETURNING,
            body.sku,
            body.name,
            body.description,
            body.category,
            body.price.amount,
            body.price.currency,
            json.dumps(body.attributes, ensure_ascii=False),
            body.weight_g,
        )
        if row is None:
            raise Problem(409, "product-exists", f"A product with SKU {body.sku} exists.")
        await conn.execute(
            "INSERT INTO inventory (sku, on_hand) VALUES ($1, 0) ON CONFLICT DO NOTHING", body.sku
        )
        await emit_product_event(rt, conn, PRODUCT_CREATED, body.sku, ["*"])
        await record_admin_action(rt, admin, "product.create", body.sku, conn=conn)
    return _render(row)


@router.patch(
    "/v1/admin/products/{sku}",
    openapi_extra=ADMIN,
    responses={404: {"description": "no such product"}},
)
async def change_product(sku: Sku, body: ProductChange, admin: Admin) -> dict[str, Any]:
    """Change any of name, description, category, price, attributes, weight_g.
    ``attributes`` replaces the whole set; the result must fit the (new) category's schema."""
    fields = sorted(body.model_fields_set)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        if body.category is not None or body.attributes is not None:
            # The row is locked so a concurrent change cannot slip a misfit past this check.
            current = await conn.fetchrow(
                "SELECT category, attributes::text AS a FROM products"
                " WHERE sku = $1 AND retired_at IS NULL FOR UPDATE",
                sku,
            )
            if current is None:
                raise Problem(404, "not-found", "No such product.")
            if body.attributes is not None:
                _conform(body.category or current["category"], body.attributes, "body.attributes")
            else:  # a new category: the attributes the product keeps must fit it
                _conform(body.category or "", json.loads(current["a"]), "attributes")
        price = body.price
        row = await conn.fetchrow(
            "UPDATE products SET"
            " name = COALESCE($2, name), description = COALESCE($3, description),"
            " category = COALESCE($4, category), price_minor = COALESCE($5, price_minor),"
            " currency = COALESCE($6, currency),"
            " attributes = COALESCE($7::text::jsonb, attributes),"
            " weight_g = COALESCE($8, weight_g), updated_at = now()"
            " WHERE sku = $1 AND retired_at IS NULL" + _RETURNING,
            sku,
            body.name,
            body.description,
            body.category,
            price.amount if price else None,
            price.currency if price else None,
            json.dumps(body.attributes, ensure_ascii=False)
            if body.attributes is not None
            else None,
            body.weight_g,
        )
        if row is None:
            raise Problem(404, "not-found", "No such product.")
        await emit_product_event(rt, conn, PRODUCT_UPDATED, sku, fields)
        await record_admin_action(rt, admin, "product.update", sku, {"fields": fields}, conn=conn)
    catalog = rt.catalog
    available = catalog.available.get(sku, 0) if catalog is not None else 0
    rendered = _render(row)
    rendered["in_stock"] = available > 0
    return rendered


@router.delete(
    "/v1/admin/products/{sku}",
    status_code=204,
    openapi_extra=ADMIN,
    responses={404: {"description": "no such product"}},
)
async def retire_product(sku: Sku, admin: Admin) -> Response:
    """Retire a product: it leaves search, lists and pages; orders keep it."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        retired = await conn.fetchval(
            "UPDATE products SET retired_at = now(), updated_at = now()"
            " WHERE sku = $1 AND retired_at IS NULL RETURNING sku",
            sku,
        )
        if retired is None:
            raise Problem(404, "not-found", "No such product.")
        await emit_product_event(rt, conn, PRODUCT_DELETED, sku, ["retired_at"])
        await record_admin_action(rt, admin, "product.retire", sku, conn=conn)
    return Response(status_code=204)


@router.get(
    "/v1/admin/categories/{category}/schema",
    openapi_extra=ADMIN,
    responses={404: {"description": "no such category"}},
)
async def category_attribute_schema(
    category: Annotated[str, Path(pattern=r"^[a-z0-9-]{1,40}$")], _admin: Admin
) -> dict[str, Any]:
    """The attributes a product of ``category`` may carry: type and allowed values."""
    shown = category_schema.describe(category)
    if shown is None:
        raise Problem(404, "not-found", "No such category.")
    return shown
