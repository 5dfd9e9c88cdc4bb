"""Cart routes: the caller's cart (anonymous by cart token, or the user's), priced.

A warm cart read or edit makes no PostgreSQL round trip: the cart (lines and
coupon code) is its shard's state, reached through ``CartClient``; product
facts, availability, pricing tables and coupon definitions are the replica's
in-memory ``CatalogState``; the cart is priced once, in memory. Applying a
coupon is the exception: it reads the code's usage counts (the authoritative
limits are enforced again, atomically, at checkout).

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Header, Query, Request, Response

from actors.cart.model import CartView as ShardCart
from actors.cart.model import user_cart_id
from actors.messages import Rejected
from actors.pricing.engine import AppliedDiscount, Destination, Quote
from cluster.adapters import pricing_store
from cluster.adapters.pricing_store import ProductFacts
from serve.auth.principal import PUBLIC, MaybeUser
from serve.catalog_state import CatalogState
from serve.problems import Problem, actor_call, rejected
from serve.runtime import Runtime, runtime
from serve.schemas import AddItem, ApplyCoupon, CartView, SetQuantity, Sku, money

router = APIRouter(tags=["cart"])
CART_TOKEN = "X-Cart-Token"  # noqa: S105 - a header name
WHAT = "The cart service"
# The anonymous caller's cart token (API.md: first cart call answers one).
CartTokenHeader = Annotated[str | None, Header(max_length=200)]


def _discount(d: AppliedDiscount) -> dict[str, Any]:
    return {"id": d.id, "label": d.label, "amount": money(d.amount)}


def _cart_body(
    view: ShardCart,
    priced: Quote,
    catalog: CatalogState,
    token: str | None,
    coupon: dict[str, Any] | None,
    state: str | None,
) -> dict[str, Any]:
    """The cart response from the shard's view and its quote (lines in the same order)."""
    promotions: dict[str, dict[str, Any]] = {}
    lines = []
    for line, quoted in zip(view.lines, priced.lines, strict=True):
        for d in quoted.discounts:
            entry = promotions.setdefault(
                d.id, {"id": d.id, "label": d.label, "amount": 0, "kind": "promotion"}
            )
            entry["amount"] += d.amount
        lines.append(
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unit_price": money(quoted.unit_price),
                "line_subtotal": money(quoted.line_subtotal),
                "discounts": [_discount(d) for d in quoted.discounts],
                "line_total": money(quoted.line_total),
                "available": line.sku in catalog.products
                and catalog.available.get(line.sku, 0) >= line.quantity,
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


def _cart_id(rt: Runtime, token: str | None, principal: Any = None) -> tuple[str, str | None]:
    """The caller's cart id and, for anonymous callers, their cart token."""
    assert rt.tokens is not None
    if principal is not None:
        return user_cart_id(principal.user_id), None
    if token is None:
        token = rt.tokens.issue()
    cart_id = rt.tokens.cart_id(token)
    if cart_id is None:
        raise Problem(400, "invalid-cart-token", "X-Cart-Token is not a token this API issued.")
    return cart_id, token


def _checked(reply: ShardCart | Rejected) -> ShardCart:
    if isinstance(reply, Rejected):
        raise rejected(reply)
    return reply


async def _view(rt: Runtime, cart_id: str, token: str | None, header: str | None) -> ShardCart:
    """The shard's view; a cart whose token was issued just now is empty, no call needed."""
    if header is None and token is not None:
        return ShardCart(cart_id, 0, (), 0, None)
    return await actor_call(rt.carts.get(cart_id), WHAT)


async def _command(
    response: Response,
    principal: Any,
    x_cart_token: str | None,
    command: Callable[[Any, str], Awaitable[ShardCart | Rejected]],
) -> Any:
    """One command on the caller's cart, answered with the cart priced."""
    rt = await runtime().ready()
    cart_id, token = _cart_id(rt, x_cart_token, principal)
    reply = await actor_call(command(rt.carts, cart_id), WHAT)
    return await _render(rt, _checked(reply), token, response, principal)


async def _render(
    rt: Runtime,
    view: ShardCart,
    token: str | None,
    response: Response,
    principal: Any = None,
    shipping_method: str | None = None,
    state: str | None = None,
) -> Any:
    """The cart as answered: lines with availability, priced once by the pricing engine.

    A held coupon that no longer applies is shown with ``applied: false`` and the
    reason, and the cart is priced without it (a second in-memory quote, the only
    one); a shipping request the engine refuses (unknown method, unreachable
    state) is a 422.
    """
    catalog = rt.catalog
    assert catalog is not None
    user_id = principal.user_id if principal is not None else None
    destination = Destination("BR", state, "") if state is not None else None
    method = shipping_method if view.lines else None  # nothing to ship
    facts: dict[str, ProductFacts] = await catalog.facts([x.sku for x in view.lines])
    lines = catalog.lines(view, facts)
    code = view.coupon
    definition = await catalog.coupon(code) if code is not None else None
    priced = catalog.quote(lines, definition, code, user_id, method, destination)
    coupon: dict[str, Any] | None = None
    if code is not None:
        coupon = {"code": code, "applied": True, "reason_code": None, "reason": None}
        if isinstance(priced, Rejected) and priced.code.startswith("coupon-"):
            coupon.update(applied=False, reason_code=priced.code, reason=priced.detail)
            priced = catalog.quote(lines, None, None, user_id, method, destination)
    if isinstance(priced, Rejected):
        raise Problem(422, priced.code, priced.detail)
    # Encoded here, not validated again against ``CartView`` (the body is built to it).
    body = msgspec.json.encode(_cart_body(view, priced, catalog, token, coupon, state))
    headers = {CART_TOKEN: token} if token is not None else None
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/v1/cart",
    response_model=CartView,
    openapi_extra=PUBLIC,
    responses={422: {"description": "the shipping request cannot be quoted"}},
)
async def get_cart(
    response: Response,
    principal: MaybeUser,
    x_cart_token: CartTokenHeader = None,
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
    cart_id, token = _cart_id(rt, x_cart_token, principal)
    view = await _view(rt, cart_id, token, x_cart_token)
    return await _render(rt, view, token, response, principal, shipping_method, state)


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
    x_cart_token: CartTokenHeader = None,
) -> Any:
    """Add a product; quantities of the same SKU add up."""
    rt = await runtime().ready()
    assert rt.catalog is not None
    cart_id, token = _cart_id(rt, x_cart_token, principal)
    found = await rt.catalog.product(body.sku)
    if found is None:
        raise Problem(404, "not-found", "No such product.")
    product = found[0]
    reply = await actor_call(
        rt.carts.add_item(cart_id, body.sku, product.name, product.price_minor, body.quantity),
        WHAT,
    )
    return await _render(rt, _checked(reply), token, response, principal)


@router.patch("/v1/cart/items/{sku}", response_model=CartView, openapi_extra=PUBLIC)
async def set_quantity(
    sku: Sku,
    body: SetQuantity,
    response: Response,
    principal: MaybeUser,
    x_cart_token: CartTokenHeader = None,
) -> Any:
    """Set a line's quantity; 0 removes it."""
    return await _command(
        response,
        principal,
        x_cart_token,
        lambda carts, cart: carts.set_quantity(cart, sku, body.quantity),
    )


@router.delete("/v1/cart/items/{sku}", response_model=CartView, openapi_extra=PUBLIC)
async def remove_item(
    sku: Sku,
    response: Response,
    principal: MaybeUser,
    x_cart_token: CartTokenHeader = None,
) -> Any:
    """Remove a line."""
    return await _command(
        response, principal, x_cart_token, lambda carts, cart: carts.remove_item(cart, sku)
    )


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
    x_cart_token: CartTokenHeader = None,
) -> Any:
    """Apply a coupon code (case-insensitive) to the cart; it replaces any earlier one.

    The code is checked by pricing the cart with it, usage limits included. When it
    does not apply the answer is a 422 whose `type` ends with the reason
    (`coupon-unknown`, `coupon-not-started`, `coupon-expired`, `coupon-exhausted`,
    `coupon-login-required`, `coupon-user-limit`, `coupon-min-subtotal`,
    `coupon-not-stackable`) and the cart keeps its previous coupon. The coupon stays
    with the cart and is re-checked every time the cart is shown (against its
    definition; usage limits are checked here and at checkout).
    """
    rt = await runtime().ready()
    catalog = rt.catalog
    assert catalog is not None
    cart_id, token = _cart_id(rt, x_cart_token, principal)
    view = await _view(rt, cart_id, token, x_cart_token)
    user_id = principal.user_id if principal is not None else None
    definition = await pricing_store.coupon_with_uses(rt.pool, body.code, user_id)
    if definition is not None:  # the replica learns a code it had not seen yet
        catalog.coupons[definition.code] = replace(definition, uses_total=0, uses_by_user={})
    lines = catalog.lines(view, await catalog.facts([x.sku for x in view.lines]))
    priced = catalog.quote(lines, definition, body.code, user_id)
    if isinstance(priced, Rejected):
        raise Problem(422, priced.code, priced.detail)
    reply = await actor_call(rt.carts.apply_coupon(cart_id, body.code), WHAT)
    return await _render(rt, _checked(reply), token, response, principal)


@router.delete("/v1/cart/coupon", response_model=CartView, openapi_extra=PUBLIC)
async def remove_coupon(
    response: Response,
    principal: MaybeUser,
    x_cart_token: CartTokenHeader = None,
) -> Any:
    """Remove the cart's coupon (a cart without one is left as it is) and answer the cart."""
    rt = await runtime().ready()
    cart_id, token = _cart_id(rt, x_cart_token, principal)
    if x_cart_token is None and token is not None:
        view = await _view(rt, cart_id, token, x_cart_token)
    else:
        view = await actor_call(rt.carts.remove_coupon(cart_id), WHAT)
    return await _render(rt, view, token, response, principal)


async def merge_anonymous_cart(rt: Any, request: Request, user_id: str) -> None:
    """Login: the anonymous cart's lines and coupon move into the user's cart.

    One command on the user's cart shard takes both (``absorb``: lines as far as
    the rules allow, the coupon unless the user's cart has one), durably; only then
    is the anonymous cart cleared. A crash between the two leaves the lines in both
    carts, never in neither.
    """
    token = request.headers.get("x-cart-token")
    if not token or rt.tokens is None:
        return
    anon_id = rt.tokens.cart_id(token)
    if anon_id is None:
        return
    anon = await actor_call(rt.carts.get(anon_id), WHAT)
    if not anon.lines and anon.coupon is None:
        return
    await actor_call(rt.carts.absorb(user_cart_id(user_id), anon.lines, anon.coupon), WHAT)
    await actor_call(rt.carts.clear(anon_id), WHAT)
