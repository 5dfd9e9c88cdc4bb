"""The HTTP API: a Ray Serve deployment with a FastAPI ingress.

No ``from __future__ import annotations`` here: Serve rebinds the route
methods, and FastAPI must see real annotations, not strings.

Routes translate HTTP into commands for the shard actors (through the
directory) or reads from PostgreSQL, and replies into response models.
Every error is problem+json (``serve.problems``).
"""

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.pricing.engine import AppliedDiscount, Destination, Quote, Rejected
from cluster.settings import get_settings
from serve import pricing_service, problems
from serve.admin import router as admin_router
from serve.auth.principal import ADMIN, PUBLIC, Admin, MaybeUser
from serve.auth.routes import request_ip
from serve.auth.routes import router as auth_router
from serve.cursors import decode_cursor, page
from serve.orders import router as orders_router
from serve.problems import Problem
from serve.ratelimit import Limit
from serve.runtime import runtime
from serve.schemas import (
    AddItem,
    ApplyCoupon,
    CartView,
    Product,
    ProductPage,
    SetQuantity,
    Sku,
    money,
)

REQUESTS = Counter("agora_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "agora_http_request_seconds",
    "HTTP request latency inside the API replica",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SHARD_GAUGES = {
    name: Gauge(f"agora_shard_{name}", help_text, ["shard"])
    for name, help_text in {
        "resident": "keys held in memory",
        "dirty_keys": "keys changed and not yet flushed",
        "pending_lag_ms": "age of the oldest unflushed change",
        "last_flush_lag_ms": "change-to-commit lag of the last batch",
        "max_flush_lag_ms": "worst change-to-commit lag seen",
        "last_batch_size": "rows in the last flushed batch",
        "committed_batches": "batches committed",
        "committed_rows": "rows committed",
        "failed_batches": "batches that failed and were retried",
    }.items()
}
MAX_BODY = 64 * 1024


class Guard:
    """Pure ASGI middleware: body size limit and request metrics."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY):
                response = problems.problem_response(
                    413, None, f"Request bodies are limited to {MAX_BODY} bytes."
                )
                await response(scope, receive, send)
                return
        if scope["path"].startswith("/v1/") and not await _within_api_limit(scope):
            return await _too_many(scope, receive, send)
        start = time.perf_counter()
        status = 500
        received = 0

        async def counted_receive() -> dict[str, Any]:
            """Count body bytes too: a chunked upload has no Content-Length to check."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:
                    raise StarletteHTTPException(
                        413, f"Request bodies are limited to {MAX_BODY} bytes."
                    )
            return dict(message)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(path).observe(time.perf_counter() - start)


async def _within_api_limit(scope: dict[str, Any]) -> bool:
    """The global per-client-IP limit; fails open if Redis is unreachable."""
    from starlette.requests import Request

    rt = runtime()
    if rt.limiter is None:
        try:
            await rt.ready()
        except Exception:
            return True
    limit = Limit("api-ip", rt.settings.api_requests_per_ip, rt.settings.api_requests_period_s)
    try:
        decision = await rt.limiter.hit(limit, request_ip(Request(scope)))
    except Exception:
        return True
    scope.setdefault("state", {})["retry_after"] = decision.retry_after_s
    return bool(decision.allowed)


async def _too_many(scope: dict[str, Any], receive: Any, send: Any) -> None:
    retry = str(scope.get("state", {}).get("retry_after", 1))
    response = problems.problem_response(
        429, "rate-limited", "Too many requests from this address.", {"Retry-After": retry}
    )
    await response(scope, receive, send)


api = FastAPI(
    title="Agora",
    version="1.0.0",
    description="Actor-based e-commerce backend. Errors are RFC 9457 problem+json.",
)
problems.install(api)
api.add_middleware(Guard)
api.include_router(auth_router)
api.include_router(admin_router)
api.include_router(orders_router)

CART_TOKEN = "X-Cart-Token"  # noqa: S105 - a header name
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


async def _call_shard(ref: Any) -> Any:
    return await problems.actor_call(ref, "The cart service")


def _discount(d: AppliedDiscount) -> dict[str, Any]:
    return {"id": d.id, "label": d.label, "amount": money(d.amount)}


def _cart_body(
    view: dict[str, Any],
    priced: Quote,
    facts: dict[str, pricing_service.ProductFacts],
    token: str | None,
    coupon: dict[str, Any] | None,
    state: str | None,
) -> dict[str, Any]:
    """The cart response from the shard's view and its quote (lines in the same order)."""
    promotions: dict[str, dict[str, Any]] = {}
    lines = []
    for line, quoted in zip(view["lines"], priced.lines, strict=True):
        for d in quoted.discounts:
            entry = promotions.setdefault(
                d.id, {"id": d.id, "label": d.label, "amount": 0, "kind": "promotion"}
            )
            entry["amount"] += d.amount
        fact = facts.get(line["sku"])
        lines.append(
            {
                "sku": line["sku"],
                "name": line["name"],
                "quantity": line["quantity"],
                "unit_price": money(quoted.unit_price),
                "line_subtotal": money(quoted.line_subtotal),
                "discounts": [_discount(d) for d in quoted.discounts],
                "line_total": money(quoted.line_total),
                "available": fact is not None and fact.available >= line["quantity"],
            }
        )
    discounts = [{**p, "amount": money(p["amount"])} for p in promotions.values()]
    discounts += [{**_discount(d), "kind": "coupon"} for d in priced.discounts]
    shipping = priced.shipping
    delivery = None
    if shipping is not None:
        region = (state or "").strip().upper()
        delivery = {"method": shipping.method, "state": region, "days": shipping.days}
    return {
        "cart_token": token,
        "lines": lines,
        "subtotal": money(priced.subtotal),
        "discounts": discounts,
        "discount_total": money(priced.discount_total),
        "coupon": coupon,
        "shipping": money(shipping.amount) if shipping is not None else None,
        "delivery": delivery,
        "tax": money(priced.tax),
        "total": money(priced.total),
    }


_REJECTION_STATUS = {"not-in-cart": 404, "quantity-limit": 422, "cart-full": 422}


@serve.deployment(
    name="Api",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    health_check_period_s=5,
)
@serve.ingress(api)
class Api:
    """The HTTP ingress deployment."""

    def __init__(self) -> None:
        self.rt = runtime()

    # --- health ------------------------------------------------------------

    @api.get("/healthz", tags=["health"], openapi_extra=PUBLIC)
    async def healthz(self) -> dict[str, str]:
        """The process is up (no dependency is checked)."""
        return {"status": "ok"}

    @api.get(
        "/readyz",
        tags=["health"],
        openapi_extra=PUBLIC,
        responses={503: {"description": "a dependency is down"}},
    )
    async def readyz(self) -> Any:
        """Ready to serve: database, cache, broker and cart shards reachable."""
        try:
            rt = await self.rt.ready()
        except Exception:
            return problems.problem_response(
                503, "not-ready", "Service configuration is not available.", failing=["config"]
            )
        failing = []
        for name, check in (
            ("database", rt.check_database),
            ("redis", rt.check_redis),
            ("broker", rt.check_broker),
            ("cart_shards", rt.check_shards),
        ):
            try:
                await check()
            except Exception:
                failing.append(name)
        if failing:
            return problems.problem_response(
                503, "not-ready", "Not ready: " + ", ".join(failing) + ".", failing=failing
            )
        return {"status": "ready"}

    @api.get("/metrics", tags=["health"], response_class=PlainTextResponse, openapi_extra=PUBLIC)
    async def metrics(self) -> Response:
        """Prometheus text: request counts and latency of this replica, shard flush metrics."""
        try:
            rt = await self.rt.ready()
            handles = rt.directory.all_handles("cart")
            for stats in await _gather([h.stats.remote() for h in handles], timeout=2.0):
                for name, gauge in SHARD_GAUGES.items():
                    gauge.labels(stats["name"]).set(stats.get(name, 0))
        except Exception:  # noqa: S110 - metrics must render even while a shard restarts
            pass
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # --- catalog -----------------------------------------------------------

    @api.get("/v1/products", response_model=ProductPage, tags=["catalog"], openapi_extra=PUBLIC)
    async def list_products(
        self,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        category: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,40}$")] = None,
        min_price: Annotated[int | None, Query(ge=0)] = None,
        max_price: Annotated[int | None, Query(ge=0)] = None,
    ) -> Any:
        """Browse the catalog by category and price, ordered by SKU, with category facets."""
        rt = await self.rt.ready()
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

    @api.get(
        "/v1/products/{sku}",
        response_model=Product,
        tags=["catalog"],
        openapi_extra=PUBLIC,
        responses={404: {"description": "no such product"}},
    )
    async def get_product(self, sku: str) -> Any:
        """One product with its price, attributes, images and whether it is in stock."""
        return await self._product(sku)

    async def _product(self, sku: str) -> dict[str, Any]:
        rt = await self.rt.ready()
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

    # --- cart --------------------------------------------------------------

    async def _cart_id(self, token: str | None, principal: Any = None) -> tuple[str, str | None]:
        """The caller's cart id and, for anonymous callers, their cart token."""
        rt = await self.rt.ready()
        assert rt.tokens is not None
        if principal is not None:
            return f"user:{principal.user_id}", None
        if token is None:
            token = rt.tokens.issue()
        cart_id = rt.tokens.cart_id(token)
        if cart_id is None:
            raise Problem(400, "invalid-cart-token", "X-Cart-Token is not a token this API issued.")
        return cart_id, token

    async def _render(
        self,
        view: dict[str, Any],
        token: str | None,
        response: Response,
        principal: Any = None,
        shipping_method: str | None = None,
        state: str | None = None,
    ) -> Any:
        """The cart as answered: lines with availability, priced by the pricing engine.

        A stored coupon that no longer applies is shown with ``applied: false`` and
        the reason, and the cart is priced without it; a shipping request the engine
        refuses (unknown method, unreachable state) is a 422.
        """
        rt = await self.rt.ready()
        user_id = principal.user_id if principal is not None else None
        destination = Destination("BR", state, "") if state is not None else None
        method = shipping_method if view["lines"] else None  # nothing to ship
        skus = [line["sku"] for line in view["lines"]]
        async with rt.pool.acquire() as conn:
            facts = await pricing_service.product_facts(conn, skus)
            code = await pricing_service.cart_coupon(conn, view["cart_id"])
            priced = await pricing_service.cart_quote(
                conn, view, code, user_id, method, destination, facts=facts
            )
            coupon: dict[str, Any] | None = None
            if code is not None:
                coupon = {"code": code, "applied": True, "reason_code": None, "reason": None}
                if isinstance(priced, Rejected) and priced.code.startswith("coupon-"):
                    coupon.update(applied=False, reason_code=priced.code, reason=priced.detail)
                    priced = await pricing_service.cart_quote(
                        conn, view, None, user_id, method, destination, facts=facts
                    )
        if isinstance(priced, Rejected):
            raise Problem(422, priced.code, priced.detail)
        if token is not None:
            response.headers[CART_TOKEN] = token
        return _cart_body(view, priced, facts, token, coupon, state)

    def _reply(self, reply: dict[str, Any]) -> dict[str, Any]:
        if not reply["ok"]:
            raise Problem(_REJECTION_STATUS.get(reply["code"], 422), reply["code"], reply["detail"])
        return reply["cart"]

    @api.get(
        "/v1/cart",
        response_model=CartView,
        tags=["cart"],
        openapi_extra=PUBLIC,
        responses={422: {"description": "the shipping request cannot be quoted"}},
    )
    async def get_cart(
        self,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
        shipping_method: Annotated[
            Literal["standard", "express"] | None,
            Query(description="quote shipping with this method (needs `state`)"),
        ] = None,
        state: Annotated[
            str | None,
            Query(pattern=r"^[A-Za-z]{2}$", description="destination state (UF), e.g. SP"),
        ] = None,
    ) -> Any:
        """The caller's cart, priced: promotions, the coupon, and tax; an anonymous first
        call gets a new cart token.

        Shipping is quoted only when asked: `?shipping_method=standard&state=SP` fills
        `shipping` and `delivery` and adds shipping to `total`; a method without a state,
        or a state the method does not reach, is a 422. `state` alone selects the tax
        rules of that state. An empty cart has nothing to ship (`shipping` stays null).
        """
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        t0 = time.perf_counter()
        view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
        t1 = time.perf_counter()
        body = await self._render(view, token, response, principal, shipping_method, state)
        t2 = time.perf_counter()
        response.headers["Server-Timing"] = (
            f"shard;dur={(t1 - t0) * 1000:.2f}, db;dur={(t2 - t1) * 1000:.2f}"
        )
        return body

    @api.post(
        "/v1/cart/items",
        response_model=CartView,
        tags=["cart"],
        openapi_extra=PUBLIC,
        responses={404: {"description": "no such product"}, 422: {"description": "rejected"}},
    )
    async def add_item(
        self,
        body: AddItem,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Add a product; quantities of the same SKU add up."""
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        product = await self._product(body.sku)
        shard = rt.directory.get("cart", cart_id)
        reply = await _call_shard(
            shard.add_item.remote(
                cart_id, body.sku, product["name"], product["price"]["amount"], body.quantity
            )
        )
        return await self._render(self._reply(reply), token, response, principal)

    @api.patch("/v1/cart/items/{sku}", response_model=CartView, tags=["cart"], openapi_extra=PUBLIC)
    async def set_quantity(
        self,
        sku: Sku,
        body: SetQuantity,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Set a line's quantity; 0 removes it."""
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        shard = rt.directory.get("cart", cart_id)
        reply = await _call_shard(shard.set_quantity.remote(cart_id, sku, body.quantity))
        return await self._render(self._reply(reply), token, response, principal)

    @api.delete(
        "/v1/cart/items/{sku}", response_model=CartView, tags=["cart"], openapi_extra=PUBLIC
    )
    async def remove_item(
        self,
        sku: Sku,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Remove a line."""
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        shard = rt.directory.get("cart", cart_id)
        reply = await _call_shard(shard.remove_item.remote(cart_id, sku))
        return await self._render(self._reply(reply), token, response, principal)

    @api.post(
        "/v1/cart/coupon",
        response_model=CartView,
        tags=["cart"],
        openapi_extra=PUBLIC,
        responses={422: {"description": "the code does not apply (the type names the reason)"}},
    )
    async def apply_coupon(
        self,
        body: ApplyCoupon,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Apply a coupon code (case-insensitive) to the cart; it replaces any earlier one.

        The code is checked by pricing the cart with it. When it does not apply the
        answer is a 422 whose `type` ends with the reason (`coupon-unknown`,
        `coupon-not-started`, `coupon-expired`, `coupon-exhausted`,
        `coupon-login-required`, `coupon-user-limit`, `coupon-min-subtotal`,
        `coupon-not-stackable`) and the cart keeps its previous coupon. The coupon
        stays with the cart and is re-checked every time the cart is shown.
        """
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
        user_id = principal.user_id if principal is not None else None
        async with rt.pool.acquire() as conn:
            priced = await pricing_service.cart_quote(conn, view, body.code, user_id)
            if isinstance(priced, Rejected):
                raise Problem(422, priced.code, priced.detail)
            await pricing_service.set_cart_coupon(conn, cart_id, body.code)
        return await self._render(view, token, response, principal)

    @api.delete("/v1/cart/coupon", response_model=CartView, tags=["cart"], openapi_extra=PUBLIC)
    async def remove_coupon(
        self,
        response: Response,
        principal: MaybeUser,
        x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Remove the cart's coupon (a cart without one is left as it is) and answer the cart."""
        rt = await self.rt.ready()
        cart_id, token = await self._cart_id(x_cart_token, principal)
        async with rt.pool.acquire() as conn:
            await pricing_service.clear_cart_coupon(conn, cart_id)
        view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
        return await self._render(view, token, response, principal)

    # --- operators ---------------------------------------------------------

    @api.get("/v1/admin/cluster", tags=["admin"], openapi_extra=ADMIN)
    async def cluster(self, _admin: Admin) -> dict[str, Any]:
        """Shards with their node, pid and flush metrics; nodes; the outbox relay."""
        import ray

        from streams.outbox import relay_actor_name

        rt = await self.rt.ready()
        shards = []
        for kind in ("cart", "session", "inventory", "order"):
            for name in rt.directory.shard_names(kind):
                try:
                    stats = await asyncio.wait_for(rt.directory.handle(name).stats.remote(), 2)
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


async def _gather(refs: list[Any], timeout: float) -> list[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*refs), timeout))


def build_app(num_replicas: int | None = None) -> Any:
    """The Serve application (one ``Api`` deployment)."""
    settings = get_settings()
    deployment: Any = Api
    return deployment.options(num_replicas=num_replicas or settings.api_replicas).bind()


app = build_app
