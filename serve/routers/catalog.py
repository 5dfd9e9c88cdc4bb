"""Catalog routes: browse with filters and facets, one product.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from serve.auth.principal import PUBLIC
from serve.cursors import decode_cursor, page
from serve.problems import Problem
from serve.runtime import runtime
from serve.schemas import Product, ProductPage, money

router = APIRouter(tags=["catalog"])

_PRODUCT_COLUMNS = """
    p.sku, p.name, p.description, p.category, p.price_minor, p.currency,
    p.attributes, p.images, COALESCE(i.on_hand - i.reserved, 0) > 0 AS in_stock
"""


def _product(row: Any) -> dict[str, Any]:
    return {
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "category": row["category"],
        "price": money(row["price_minor"], row["currency"]),
        "attributes": row["attributes"],
        "images": row["images"],
        "in_stock": row["in_stock"],
    }


@router.get("/v1/products", response_model=ProductPage, openapi_extra=PUBLIC)
async def list_products(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    category: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,40}$")] = None,
    min_price: Annotated[int | None, Query(ge=0)] = None,
    max_price: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    """Browse the catalog by category and price, ordered by SKU, with category facets."""
    rt = await runtime().ready()
    after = decode_cursor(cursor)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i USING (sku)"
            " WHERE ($1::text IS NULL OR p.category = $1)"
            " AND ($2::text IS NULL OR p.sku > $2)"
            " AND ($3::bigint IS NULL OR p.price_minor >= $3)"
            " AND ($4::bigint IS NULL OR p.price_minor <= $4)"
            " ORDER BY p.sku LIMIT $5",
            category, after, min_price, max_price, limit + 1,
        )  # fmt: skip
        facets = rt.facets.get((min_price, max_price))
        if facets is None:
            counts = await conn.fetch(
                "SELECT category, count(*) AS n FROM products"
                " WHERE ($1::bigint IS NULL OR price_minor >= $1)"
                " AND ($2::bigint IS NULL OR price_minor <= $2)"
                " GROUP BY category ORDER BY category",
                min_price, max_price,
            )  # fmt: skip
            facets = {"category": {r["category"]: r["n"] for r in counts}}
            rt.facets.put((min_price, max_price), facets)
    rows, next_cursor = page(rows, limit, "sku")
    return {
        "items": [_product(r) for r in rows],
        "next_cursor": next_cursor,
        "facets": facets,
    }


@router.get(
    "/v1/products/{sku}",
    response_model=Product,
    openapi_extra=PUBLIC,
    responses={404: {"description": "no such product"}},
)
async def get_product(sku: str) -> Any:
    """One product with its price, attributes, images and whether it is in stock."""
    return await product_by_sku(sku)


async def product_by_sku(sku: str) -> dict[str, Any]:
    rt = await runtime().ready()
    cached = rt.products.get(sku)
    if cached is not None:
        return cached
    if len(sku) > 32:
        raise Problem(404, "not-found", "No such product.")
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {_PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i USING (sku)"
            " WHERE p.sku = $1",
            sku,
        )
    if row is None:
        raise Problem(404, "not-found", "No such product.")
    product = _product(row)
    rt.products.put(sku, product)
    return product
