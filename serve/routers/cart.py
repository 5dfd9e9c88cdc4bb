"""Cart routes: the caller's cart (anonymous by cart token, or the user's), priced.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from actors.pricing.engine import AppliedDiscount, Destination, Quote, Rejected
from serve import pricing_service, problems
from serve.auth.principal import PUBLIC, MaybeUser
from serve.problems import Problem, actor_call
from serve.routers.catalog import product_by_sku
from serve.runtime import runtime
from serve.schemas import AddItem, ApplyCoupon, CartView, SetQuantity, Sku, money

router = APIRouter(tags=["cart"])
CART_TOKEN = "X-Cart-Token"  # noqa: S105 - a header name


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


async def _cart_id(token: str | None, principal: Any = None) -> tuple[str, str | None]:
    """The caller's cart id and, for anonymous callers, their cart token."""
    rt = await runtime().ready()
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
    rt = await runtime().ready()
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


def _reply(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply["ok"]:
        raise Problem(_REJECTION_STATUS.get(reply["code"], 422), reply["code"], reply["detail"])
    return reply["cart"]


@router.get(
    "/v1/cart",
    response_model=CartView,
    openapi_extra=PUBLIC,
    responses={422: {"description": "the shipping request cannot be quoted"}},
)
async def get_cart(
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
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    t0 = time.perf_counter()
    view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
    t1 = time.perf_counter()
    body = await _render(view, token, response, principal, shipping_method, state)
    t2 = time.perf_counter()
    response.headers["Server-Timing"] = (
        f"shard;dur={(t1 - t0) * 1000:.2f}, db;dur={(t2 - t1) * 1000:.2f}"
    )
    return body


@router.post(
    "/v1/cart/items",
    response_model=CartView,
    openapi_extra=PUBLIC,
    responses={404: {"description": "no such product"}, 422: {"description": "rejected"}},
)
async def add_item(
    body: AddItem,
    response: Response,
    principal: MaybeUser,
    x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Add a product; quantities of the same SKU add up."""
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    product = await product_by_sku(body.sku)
    shard = rt.directory.get("cart", cart_id)
    reply = await _call_shard(
        shard.add_item.remote(
            cart_id, body.sku, product["name"], product["price"]["amount"], body.quantity
        )
    )
    return await _render(_reply(reply), token, response, principal)


@router.patch("/v1/cart/items/{sku}", response_model=CartView, openapi_extra=PUBLIC)
async def set_quantity(
    sku: Sku,
    body: SetQuantity,
    response: Response,
    principal: MaybeUser,
    x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Set a line's quantity; 0 removes it."""
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    shard = rt.directory.get("cart", cart_id)
    reply = await _call_shard(shard.set_quantity.remote(cart_id, sku, body.quantity))
    return await _render(_reply(reply), token, response, principal)


@router.delete("/v1/cart/items/{sku}", response_model=CartView, openapi_extra=PUBLIC)
async def remove_item(
    sku: Sku,
    response: Response,
    principal: MaybeUser,
    x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Remove a line."""
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    shard = rt.directory.get("cart", cart_id)
    reply = await _call_shard(shard.remove_item.remote(cart_id, sku))
    return await _render(_reply(reply), token, response, principal)


@router.post(
    "/v1/cart/coupon",
    response_model=CartView,
    openapi_extra=PUBLIC,
    responses={422: {"description": "the code does not apply (the type names the reason)"}},
)
async def apply_coupon(
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
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
    user_id = principal.user_id if principal is not None else None
    async with rt.pool.acquire() as conn:
        priced = await pricing_service.cart_quote(conn, view, body.code, user_id)
        if isinstance(priced, Rejected):
            raise Problem(422, priced.code, priced.detail)
        await pricing_service.set_cart_coupon(conn, cart_id, body.code)
    return await _render(view, token, response, principal)


@router.delete("/v1/cart/coupon", response_model=CartView, openapi_extra=PUBLIC)
async def remove_coupon(
    response: Response,
    principal: MaybeUser,
    x_cart_token: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Remove the cart's coupon (a cart without one is left as it is) and answer the cart."""
    rt = await runtime().ready()
    cart_id, token = await _cart_id(x_cart_token, principal)
    async with rt.pool.acquire() as conn:
        await pricing_service.clear_cart_coupon(conn, cart_id)
    view = await _call_shard(rt.directory.get("cart", cart_id).get.remote(cart_id))
    return await _render(view, token, response, principal)


async def merge_anonymous_cart(rt: Any, request: Request, user_id: str) -> None:
    """Login: the anonymous cart's lines (and coupon) move into the user's cart."""
    token = request.headers.get("x-cart-token")
    if not token or rt.tokens is None:
        return
    anon_id = rt.tokens.cart_id(token)
    if anon_id is None:
        return
    anon = rt.directory.get("cart", anon_id)
    view = await actor_call(anon.get.remote(anon_id))
    if not view["lines"]:
        return
    user_cart = f"user:{user_id}"
    await actor_call(
        rt.directory.get("cart", user_cart).merge_into.remote(user_cart, view["lines"])
    )
    await actor_call(anon.clear.remote(anon_id))
    await _carry_coupon(rt, anon_id, user_cart)


async def _carry_coupon(rt: Any, anon_id: str, user_cart: str) -> None:
    """The anonymous cart's coupon follows its lines, unless the user's cart has one."""
    code = await pricing_service.cart_coupon(rt.pool, anon_id)
    if code is None:
        return
    if await pricing_service.cart_coupon(rt.pool, user_cart) is None:
        await pricing_service.set_cart_coupon(rt.pool, user_cart, code)
    await pricing_service.clear_cart_coupon(rt.pool, anon_id)
