"""Catalog routes: browse with filters and facets, one product.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Response

from cluster.adapters.pricing_store import ProductFacts
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
            category,
            after,
            min_price,
            max_price,
            limit + 1,
        )
        facets = rt.facets.get((min_price, max_price))
        if facets is None:
            counts = await conn.fetch(
                "SELECT category, count(*) AS n FROM products"
                " WHERE ($1::bigint IS NULL OR price_minor >= $1)"
                " AND ($2::bigint IS NULL OR price_minor <= $2)"
                " GROUP BY category ORDER BY category",
                min_price,
                max_price,
            )
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
    rt = await runtime().ready()
    assert rt.catalog is not None
    found = await rt.catalog.product(sku) if len(sku) <= 32 else None
    if found is None:
        raise Problem(404, "not-found", "No such product.")
    facts, available = found
    in_stock = available > 0
    cached = _pages.get(sku)
    # A changed product is a new facts object; encoded pages are reused until then.
    if cached is None or cached[0] is not facts or cached[1] != in_stock:
        if len(_pages) > 50_000:
            _pages.clear()
        cached = (facts, in_stock, msgspec.json.encode(_page(facts, available)))
        _pages[sku] = cached
    return Response(cached[2], media_type="application/json")


# The encoded product page per SKU, with the facts and stock flag it was made from.
_pages: dict[str, tuple[ProductFacts, bool, bytes]] = {}


def _page(facts: ProductFacts, available: int) -> dict[str, Any]:
    return {
        "sku": facts.sku,
        "name": facts.name,
        "description": facts.description,
        "category": facts.category,
        "price": money(facts.price_minor, facts.currency),
        "attributes": facts.attributes,
        "images": facts.images,
        "in_stock": available > 0,
    }
