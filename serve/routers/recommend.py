"""Recommendation routes: ``GET /v1/recommendations`` and ``GET /v1/products/{sku}/similar``.

Both ask the ``Recommender`` deployment (``serve.models.deployments``); the
answer is rendered from the replica's in-memory catalog exactly like the items
of ``GET /v1/products``. What shapes a shopper's recommendations, read at
request time (so a change counts on the next call):

- the cart (the caller's, or the anonymous cart of ``X-Cart-Token``): its
  lines are *recent* items and are never recommended;
- recently viewed products: a signed-in shopper's ``GET /v1/products/{sku}``
  notes the view without waiting (``serve.views``), written within a quarter of
  a second to a Redis list per shopper (``serve.recent``: the last
  ``MAX_RECENT`` views within ``recommend_recent_s``). ``/similar`` records
  nothing (the page that asks it was already counted);
- the shopper's past orders (their lines, from PostgreSQL) as older history.

An anonymous caller with an empty cart gets the popular items (the model's
answer for an empty history). No ``from __future__ import annotations``:
FastAPI must see real annotations.
"""

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel

from actors.cart.model import user_cart_id
from serve.auth.principal import PUBLIC, MaybeUser
from serve.models.deployments import RECOMMENDER, handle
from serve.problems import Problem, unavailable
from serve.recent import recent_views
from serve.routers.catalog import product_item, rating_of
from serve.runtime import Runtime, runtime
from serve.schemas import Product

log = logging.getLogger(__name__)
router = APIRouter(tags=["catalog"])

HISTORY_ORDERS = 20
MODEL_TIMEOUT_S = 2.0
SKU_MAX = 32


class Rating(BaseModel):
    average: float
    count: int


class RecommendedProduct(Product):
    """A product list item as ``GET /v1/products`` renders it (with its review rating)."""

    rating: Rating


class Recommendations(BaseModel):
    items: list[RecommendedProduct]


async def _ask(request: dict[str, Any]) -> list[str]:
    try:
        ranked: list[str] = await asyncio.wait_for(
            handle(RECOMMENDER).recommend.remote(request), MODEL_TIMEOUT_S
        )
        return ranked
    except Exception as exc:
        log.warning("recommender unavailable: %s", type(exc).__name__)
        raise unavailable("Recommendations are unavailable; retry shortly.") from exc


async def _past_orders(rt: Runtime, user_id: str) -> dict[str, float]:
    rows = await rt.pool.fetch(
        "SELECT data->'lines' AS lines FROM orders WHERE user_id = $1"
        " ORDER BY created_at DESC LIMIT $2",
        user_id,
        HISTORY_ORDERS,
    )
    weights: dict[str, float] = {}
    for row in rows:
        lines = row["lines"]
        if isinstance(lines, str):  # jsonb comes back as text without a codec
            lines = json.loads(lines)
        for line in lines or []:
            sku = line.get("sku") if isinstance(line, dict) else None
            if sku:
                weights[sku] = weights.get(sku, 0.0) + 3.0
    return weights


async def _cart_skus(rt: Runtime, principal: Any, token: str | None) -> list[str]:
    cart_id = None
    if principal is not None:
        cart_id = user_cart_id(principal.user_id)
    elif token and rt.tokens is not None:
        cart_id = rt.tokens.cart_id(token)
    if cart_id is None:
        return []
    try:
        view = await asyncio.wait_for(rt.carts.get(cart_id), MODEL_TIMEOUT_S)
    except Exception as exc:  # a restarting cart shard: recommend without it
        log.warning("cart unavailable for recommendations: %s", type(exc).__name__)
        return []
    return [line.sku for line in view.lines]


async def _render(rt: Runtime, skus: list[str], limit: int) -> dict[str, Any]:
    catalog = rt.catalog
    assert catalog is not None
    items = []
    for sku in skus:
        facts = catalog.products.get(sku)
        if facts is None:
            continue
        items.append(product_item(facts, catalog.available.get(sku, 0), rating_of(catalog, sku)))
        if len(items) == limit:
            break
    return {"items": items}


Limit = Annotated[int, Query(ge=1, le=50)]


@router.get(
    "/v1/recommendations",
    response_model=Recommendations,
    openapi_extra=PUBLIC,
    responses={503: {"description": "the recommender is unavailable"}},
)
async def recommendations(
    principal: MaybeUser,
    limit: Limit = 10,
    x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Personalised for the caller (cart, recent views, past orders); popular items otherwise.

    Nothing already in the caller's cart is recommended.
    """
    rt = await runtime().ready()
    cart = await _cart_skus(rt, principal, x_cart_token)
    history: dict[str, float] = {}
    recent: list[str] = list(cart)
    if principal is not None:
        history = await _past_orders(rt, principal.user_id)
        recent += await recent_views(rt.redis, principal.user_id, rt.settings.recommend_recent_s)
    ranked = await _ask(
        {"history": history, "recent": recent, "exclude": cart, "k": limit + len(cart) + 10}
    )
    return await _render(rt, [s for s in ranked if s not in set(cart)], limit)


@router.get(
    "/v1/products/{sku}/similar",
    response_model=Recommendations,
    openapi_extra=PUBLIC,
    responses={404: {"description": "no such product"}, 503: {"description": "unavailable"}},
)
async def similar(principal: MaybeUser, sku: str, limit: Limit = 10) -> Any:
    """Items bought or viewed together with ``sku`` (records no view: the page does)."""
    rt = await runtime().ready()
    assert rt.catalog is not None
    found = await rt.catalog.product(sku) if len(sku) <= SKU_MAX else None
    if found is None:
        raise Problem(404, "not-found", "No such product.")
    ranked = await _ask({"history": {sku: 1.0}, "recent": [], "exclude": [sku], "k": limit + 10})
    return await _render(rt, [s for s in ranked if s != sku], limit)
