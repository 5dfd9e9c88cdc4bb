"""Catalog routes: search and browse with filters, facets and sorts; one product; suggest.

Everything is answered from the replica's memory (``serve.catalog_state`` and
its search index): no request waits on PostgreSQL once the replica is warm.
Responses carry a strong ``ETag`` (a hash of the body) and
``Cache-Control: public, no-cache``: clients and proxies keep a copy but
revalidate it, so an edit is never served stale past the event's delivery
(``If-None-Match`` -> 304). Encoded bodies are cached per replica and keyed
by the index version and the catalog's event count, so every ``product.*``,
pricing or stock event invalidates them at once.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import base64
import binascii
import hashlib
import json
import math
import re
from collections import OrderedDict
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query, Request, Response
from prometheus_client import Counter

from cluster.adapters.pricing_store import ProductFacts
from serve.auth.principal import PUBLIC
from serve.catalog_state import CatalogState
from serve.problems import Problem
from serve.runtime import runtime
from serve.schemas import Product, ProductPage, money
from serve.search.index import Filters
from serve.views import record_view

router = APIRouter(tags=["catalog"])

Sort = Literal["relevance", "price_asc", "price_desc", "newest", "rating", "popularity"]
CACHE_CONTROL = "public, no-cache"
MAX_ATTRIBUTE_FILTERS = 8
MAX_CACHED_BODY = 64 * 1024  # bytes: 1,024 entries hold at most 64 MB, ~12 MB for 20-item pages
_ATTR_KEY = re.compile(r"^attr\.([a-z0-9_]{1,40})$")

CACHE_LOOKUPS = Counter(
    "agora_catalog_cache_lookups_total",
    "Catalog response cache lookups on this replica (hit ratio = hit / all)",
    ["cache", "result"],
)


class _Cache:
    """Encoded response bodies, least recently used out first."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.items: OrderedDict[Any, tuple[bytes, str]] = OrderedDict()

    def get(self, key: Any) -> tuple[bytes, str] | None:
        hit = self.items.get(key)
        CACHE_LOOKUPS.labels(self.name, "hit" if hit is not None else "miss").inc()
        if hit is not None:
            self.items.move_to_end(key)
        return hit

    def put(self, key: Any, body: bytes) -> tuple[bytes, str]:
        entry = (body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
        if len(body) > MAX_CACHED_BODY:  # a 100-item page: made again rather than held
            return entry
        self.items[key] = entry
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return entry


_lists = _Cache("list", 1024)


def _respond(request: Request, body: bytes, etag: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


# --- cursors ------------------------------------------------------------------------


def _encode_cursor(sort: str, key: float, sku: str) -> str:
    raw = json.dumps({"sort": sort, "key": key, "after": sku}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None, sort: str) -> tuple[float, str] | None:
    """(sort key, SKU) a cursor resumes after; 400 if not ours, 422 if from another sort."""
    if cursor is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        key, after, made_for = data["key"], data["after"], data["sort"]
        if not isinstance(after, str) or len(after) > 64 or not isinstance(made_for, str):
            raise ValueError
        if isinstance(key, bool) or not isinstance(key, (int, float)) or not math.isfinite(key):
            raise ValueError  # keys we issue are finite: NaN/Infinity came from elsewhere
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(400, "invalid-cursor", "The cursor is not one this API issued.") from exc
    if made_for != sort:
        raise Problem(
            422,
            "cursor-sort-mismatch",
            f"The cursor belongs to sort={made_for}; ask again without it to sort by {sort}.",
        )
    return float(key), after


# --- rendering ----------------------------------------------------------------------


def product_item(
    facts: ProductFacts, available: int, rating: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A product as the API shows it (page and list items alike); ``rating`` is
    ``{average, count}`` of its visible reviews."""
    return {
        "sku": facts.sku,
        "name": facts.name,
        "description": facts.description,
        "category": facts.category,
        "price": money(facts.price_minor, facts.currency),
        "attributes": facts.attributes,
        "images": facts.images,
        "in_stock": available > 0,
        "rating": rating or {"average": 0.0, "count": 0},
    }


def rating_of(catalog: CatalogState, sku: str) -> dict[str, Any]:
    """The product's review rating as the replica's index holds it."""
    average, count = catalog.index.rating_of(sku)
    return {"average": round(average, 2), "count": count}


def _attribute_filters(request: Request) -> dict[str, set[str]]:
    """``attr.<key>=<value>`` query parameters (repeat a key for any of several values)."""
    out: dict[str, set[str]] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith("attr"):
            continue
        match = _ATTR_KEY.match(name)
        if match is None or not 0 < len(value) <= 80:
            raise Problem(
                422,
                "validation",
                "Attribute filters are attr.<name>=<value> (name: a-z, 0-9, _; value 1-80 chars).",
                errors=[{"field": name[:60], "message": "invalid attribute filter"}],
            )
        out.setdefault(match.group(1), set()).add(value.strip().lower())
    if len(out) > MAX_ATTRIBUTE_FILTERS:
        raise Problem(422, "validation", f"At most {MAX_ATTRIBUTE_FILTERS} attribute filters.")
    return out


async def _catalog() -> CatalogState:
    rt = await runtime().ready()
    assert rt.catalog is not None
    return rt.catalog


@router.get("/v1/products", response_model=ProductPage, openapi_extra=PUBLIC)
async def list_products(
    request: Request,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
    category: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,40}$")] = None,
    min_price: Annotated[int | None, Query(ge=0)] = None,
    max_price: Annotated[int | None, Query(ge=0)] = None,
    sort: Sort = "relevance",
) -> Any:
    """Search and browse: full text ``q`` (typo tolerant, pt and en), ``category``,
    price range, ``attr.<name>=<value>`` filters, six sorts, keyset cursor; with facets
    (``category``, ``price`` bands, ``attr.<name>``) counted as the list would answer
    each value. Without ``q``, ``relevance`` is SKU order; ``popularity`` is units sold in
    confirmed and shipped orders, following orders within seconds."""
    catalog = await _catalog()
    attributes = _attribute_filters(request)
    after = _decode_cursor(cursor, sort)
    text = (q or "").strip()
    key = (
        catalog.index_generation,
        catalog.index.version,
        catalog.events,
        text,
        limit,
        cursor,
        category,
        min_price,
        max_price,
        sort,
        tuple(sorted((k, tuple(sorted(v))) for k, v in attributes.items())),
    )
    cached = _lists.get(key)
    if cached is None:
        index = catalog.index
        query = index.parse(text) if text else None
        filters = Filters(category, min_price, max_price, attributes)
        result = index.search(query, filters, sort, limit + 1, after)
        items = []
        for sku in result.skus[:limit]:
            facts = catalog.products.get(sku)
            if facts is None:  # dropped by a product event, its re-read not landed yet
                found = await catalog.product(sku)
                facts = found[0] if found is not None else None
            if facts is not None:
                available = catalog.available.get(sku, 0)
                items.append(product_item(facts, available, rating_of(catalog, sku)))
        next_cursor = None
        if len(result.skus) > limit:
            last = limit - 1
            next_cursor = _encode_cursor(sort, result.keys[last], result.skus[last])
        body = msgspec.json.encode(
            {"items": items, "next_cursor": next_cursor, "facets": result.facets}
        )
        cached = _lists.put(key, body)
    return _respond(request, *cached)


@router.get("/v1/search/suggest", openapi_extra=PUBLIC)
async def suggest(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=100)],
    limit: Annotated[int, Query(ge=1, le=10)] = 10,
) -> Any:
    """Completions of what is being typed (prefix and typo tolerant): categories and
    product names, at most ``limit`` (<= 10): ``{items: [{text, kind, sku?}], next_cursor}``."""
    catalog = await _catalog()
    key = ("suggest", catalog.index_generation, catalog.index.version, q, limit)
    cached = _lists.get(key)
    if cached is None:
        items = catalog.index.suggest(q, limit)
        cached = _lists.put(key, msgspec.json.encode({"items": items, "next_cursor": None}))
    return _respond(request, *cached)


@router.get(
    "/v1/products/{sku}",
    response_model=Product,
    openapi_extra=PUBLIC,
    responses={404: {"description": "no such product"}, 304: {"description": "not modified"}},
)
async def get_product(request: Request, sku: str) -> Any:
    """One product with its price, attributes, images and whether it is in stock."""
    catalog = await _catalog()
    found = await catalog.product(sku) if len(sku) <= 32 else None
    if found is None:
        raise Problem(404, "not-found", "No such product.")
    facts, available = found
    in_stock = available > 0
    cached = _pages.get(sku)
    # A changed product is a new facts object; encoded pages are reused until then.
    fresh = cached is not None and cached[0] is facts and cached[1] == in_stock
    CACHE_LOOKUPS.labels("page", "hit" if fresh else "miss").inc()
    if cached is None or not fresh:
        if len(_pages) > 50_000:
            _pages.clear()
        body = msgspec.json.encode(product_item(facts, available, rating_of(catalog, sku)))
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        cached = (facts, in_stock, body, etag)
        _pages[sku] = cached
    record_view(runtime(), request, sku)  # fire-and-forget to Pulsar (serve.views)
    return _respond(request, cached[2], cached[3])


# The encoded product page per SKU, with the facts and stock flag it was made from.
_pages: dict[str, tuple[ProductFacts, bool, bytes, str]] = {}
