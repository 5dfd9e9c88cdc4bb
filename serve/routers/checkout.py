"""Checkout and payment-gateway callbacks (API.md, "Checkout and orders").

The API validates and authorises; the order's shard runs the saga and the
server computes every total. No ``from __future__ import annotations``.
"""

import hashlib
import json
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from pydantic import Field

from actors.cart.model import user_cart_id
from actors.messages import Rejected
from actors.order.model import order_id_for
from cluster.adapters.webhooks import verify
from cluster.services import pix_webhook_secret
from serve.auth.principal import SHOPPER, User
from serve.problems import Problem, actor_call, rejected
from serve.routers.orders import order_client, render
from serve.runtime import runtime
from serve.schemas import Input

router = APIRouter(tags=["orders"])

# 13 to 19 digits, optionally grouped by spaces or dashes: what a card number looks like.
_CARD_NUMBER = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def carries_card_number(text: str) -> bool:
    """Whether the text holds a Luhn-valid 13-19 digit number (a card number)."""
    for match in _CARD_NUMBER.finditer(text):
        digits = [int(c) for c in match.group() if c.isdigit()]
        total = 0
        for i, digit in enumerate(reversed(digits)):
            if i % 2:
                digit = digit * 2 - 9 if digit > 4 else digit * 2
            total += digit
        if total % 10 == 0:
            return True
    return False


class Address(Input):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    line1: Annotated[str, Field(min_length=1, max_length=200)]
    line2: Annotated[str, Field(max_length=200)] | None = None
    city: Annotated[str, Field(min_length=1, max_length=100)]
    state: Annotated[str, Field(max_length=40)] | None = None
    postal_code: Annotated[str, Field(pattern=r"^[0-9A-Za-z -]{3,12}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class CardPayment(Input):
    method: Literal["card"]
    token: Annotated[str, Field(pattern=r"^pm_[A-Za-z0-9_]{1,100}$")]


class PixPayment(Input):
    method: Literal["pix"]


class Checkout(Input):
    shipping_address: Address
    shipping_method: Literal["standard", "express"]
    payment: CardPayment | PixPayment = Field(discriminator="method")


_TERMINAL = ("confirmed", "failed", "cancelled", "shipped", "refunded", "delivered")


@router.post(
    "/v1/checkout",
    status_code=201,
    openapi_extra=SHOPPER,
    responses={
        202: {
            "description": "pending_review, awaiting_payment, or still running (poll the Location)"
        },
        402: {"description": "declined"},
        403: {"description": "fraud-blocked"},
        409: {"description": "out of stock"},
        422: {"description": "validation, or Idempotency-Key reused with another body"},
    },
)
async def checkout(
    request: Request,
    response: Response,
    principal: User,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Any:
    """Place an order from the caller's cart. ``Idempotency-Key`` is required."""
    raw = await request.body()
    if carries_card_number(raw.decode("utf-8", errors="replace")):
        raise Problem(
            422, "card-data-refused", "Card numbers are never accepted; send a token (pm_...)."
        )
    if not idempotency_key or not idempotency_key.strip():
        raise Problem(400, "idempotency-key-required", "Send an Idempotency-Key header.")
    try:
        body = Checkout.model_validate_json(raw)
    except ValueError as exc:
        errors: list[Any] = getattr(exc, "errors", list)()
        fields = [
            {
                "field": "body." + ".".join(map(str, e.get("loc", ()))),
                "message": e.get("msg", "invalid"),
            }
            for e in errors
        ]
        if any(e.get("type") == "json_invalid" for e in errors):
            raise Problem(400, "malformed-json", "The request body is not valid JSON.") from exc
        raise Problem(422, "validation", "The request has invalid fields.", errors=fields) from exc
    rt = await runtime().ready()
    request_doc = body.model_dump()
    request_hash = hashlib.sha256(json.dumps(request_doc, sort_keys=True).encode()).hexdigest()
    order_id = order_id_for(principal.user_id, idempotency_key.strip())
    cart_id = user_cart_id(principal.user_id)
    reply = await actor_call(
        order_client().checkout(order_id, principal.user_id, request_hash, request_doc, cart_id),
        "Checkout",
    )
    del rt
    if isinstance(reply, Rejected):
        raise rejected(reply)
    order = reply.order
    response.headers["Location"] = f"/v1/orders/{order['id']}"
    if order["status"] == "failed":
        failure = order["failure"] or {}
        extra = {"order_id": order["id"]}
        if "lines" in failure:
            extra["lines"] = failure["lines"]
        code = failure.get("code", "failed")
        raise rejected(Rejected(code, failure.get("detail") or code), **extra)
    if order["status"] not in _TERMINAL:
        response.status_code = 202  # held for review, waiting for Pix, or still running
    return render(order)


@router.post(
    "/v1/payments/webhooks/{gateway}",
    openapi_extra={"x-required-role": "public"},
    tags=["payments"],
    responses={400: {"description": "bad signature: nothing changes"}},
)
async def payment_webhook(gateway: str, request: Request) -> dict[str, Any]:
    """Signed callbacks from a payment provider (``Agora-Signature: t=...,v1=...``)."""
    if gateway != "pix":
        raise Problem(404, "not-found", "No such payment gateway.")
    payload = await request.body()
    signature = request.headers.get("agora-signature")
    if not verify(pix_webhook_secret(), signature, payload, int(time.time())):
        raise Problem(400, "bad-signature", "The webhook signature is missing or invalid.")
    try:
        event = json.loads(payload)
        kind, txid, amount = event["type"], str(event["txid"]), int(event["amount"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Problem(400, "bad-request", "Not a payment event.") from exc
    if kind != "pix.paid":
        return {"received": True, "ignored": kind}
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        order_id = await conn.fetchval(
            "SELECT key FROM payments WHERE provider = 'pix' AND provider_id = $1", txid
        )
    if order_id is None:
        raise Problem(404, "not-found", "No such charge.")
    reply = await actor_call(order_client().pix_paid(order_id, amount), "Orders")
    if isinstance(reply, Rejected):
        raise rejected(reply)
    return {"received": True, "order_status": reply.status}
