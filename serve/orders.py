"""Checkout and orders routes (API.md, "Checkout and orders").

The API validates and authorises; the order's shard runs the saga. The total
is always computed by the server. No ``from __future__ import annotations``.
"""

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from actors.order.model import order_id_for
from serve.auth.principal import ADMIN, SHOPPER, Admin, User
from serve.cursors import decode_cursor, page
from serve.problems import Problem, actor_call
from serve.runtime import runtime
from serve.schemas import money

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


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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


_FAILURE_STATUS = {
    "out-of-stock": 409,
    "payment-declined": 402,
    "fraud-blocked": 403,
    "empty-cart": 422,
    "reservation-expired": 409,
    "payment-expired": 409,
}


_MONEY_TOTALS = ("subtotal", "discount_total", "shipping", "tax", "total")


def render(order: dict[str, Any]) -> dict[str, Any]:
    """Money as ``{amount, currency}`` (API.md), whatever the shard stores."""
    currency = (order.get("totals") or {}).get("currency", "BRL")
    out = dict(order)
    out["lines"] = [
        {**line, "unit_price": money(line["unit_price"], currency),
         "line_total": money(line["line_total"], currency)}
        for line in order.get("lines", [])
    ]  # fmt: skip
    totals = dict(order.get("totals") or {})
    for name in _MONEY_TOTALS:
        if isinstance(totals.get(name), int):
            totals[name] = money(totals[name], currency)
    out["totals"] = totals
    return out


def _shard(order_id: str) -> Any:
    return runtime().directory.get("order", order_id)


@router.post(
    "/v1/checkout", status_code=201, openapi_extra=SHOPPER,
    responses={202: {"description": "pending_review"}, 402: {"description": "declined"},
               403: {"description": "fraud-blocked"}, 409: {"description": "out of stock"},
               422: {"description": "validation, or Idempotency-Key reused with another body"}},
)  # fmt: skip
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
        fields = [{"field": "body." + ".".join(map(str, e.get("loc", ()))),
                   "message": e.get("msg", "invalid")} for e in errors]  # fmt: skip
        if any(e.get("type") == "json_invalid" for e in errors):
            raise Problem(400, "malformed-json", "The request body is not valid JSON.") from exc
        raise Problem(422, "validation", "The request has invalid fields.", errors=fields) from exc
    rt = await runtime().ready()
    request_doc = body.model_dump()
    request_hash = hashlib.sha256(json.dumps(request_doc, sort_keys=True).encode()).hexdigest()
    order_id = order_id_for(principal.user_id, idempotency_key.strip())
    cart_id = f"user:{principal.user_id}"
    reply = await actor_call(
        _shard(order_id).checkout.remote(
            order_id, principal.user_id, request_hash, request_doc, cart_id
        ),
        "Checkout",
    )
    del rt
    if not reply["ok"]:
        if reply["code"] == "idempotency-mismatch":
            raise Problem(422, "idempotency-key-reused",
                          "This Idempotency-Key was used with a different request.")  # fmt: skip
        raise Problem(404, "not-found", "No such order.")
    order = reply["order"]
    response.headers["Location"] = f"/v1/orders/{order['id']}"
    if order["status"] == "failed":
        failure = order["failure"] or {}
        code = failure.get("code", "failed")
        extra = {"order_id": order["id"]}
        if "lines" in failure:
            extra["lines"] = failure["lines"]
        raise Problem(_FAILURE_STATUS.get(code, 422), code, failure.get("detail"), **extra)
    if order["status"] in ("pending_review", "awaiting_payment"):
        response.status_code = 202
    return render(order)


@router.get("/v1/orders", openapi_extra=SHOPPER)
async def list_orders(
    principal: User,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The caller's orders, newest first."""
    rt = await runtime().ready()
    after = decode_cursor(cursor)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT order_id, created_at, data FROM orders WHERE user_id = $1"
            " AND ($2::text IS NULL OR (created_at, order_id) <"
            "      ((SELECT created_at FROM orders WHERE order_id = $2), $2))"
            " ORDER BY created_at DESC, order_id DESC LIMIT $3",
            principal.user_id, after, limit + 1,
        )  # fmt: skip
    rows, next_cursor = page(rows, limit, "order_id")
    return {"items": [render(_summary(r["data"])) for r in rows], "next_cursor": next_cursor}


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["order_id"], "status": doc["status"], "totals": doc["totals"],
            "lines": doc["lines"], "history": doc["history"],
            "created_at_ms": doc["created_ms"]}  # fmt: skip


async def _own_order(order_id: str, user_id: str) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9a-f-]{36}", order_id):
        raise Problem(404, "not-found", "No such order.")
    await runtime().ready()
    order = await actor_call(_shard(order_id).get.remote(order_id), "Orders")
    if order is None:
        raise Problem(404, "not-found", "No such order.")
    async with runtime().pool.acquire() as conn:
        owner = await conn.fetchval("SELECT user_id FROM orders WHERE order_id = $1", order_id)
    if owner != user_id:
        raise Problem(404, "not-found", "No such order.")
    return order


@router.get("/v1/orders/{order_id}", openapi_extra=SHOPPER)
async def get_order(order_id: str, principal: User) -> dict[str, Any]:
    """One of the caller's orders with its status history."""
    return render(await _own_order(order_id, principal.user_id))


@router.post(
    "/v1/orders/{order_id}/cancel", openapi_extra=SHOPPER,
    responses={409: {"description": "already shipped or not cancellable"}},
)  # fmt: skip
async def cancel_order(order_id: str, principal: User) -> dict[str, Any]:
    """Cancel before shipment: the payment is refunded and the stock put back."""
    await _own_order(order_id, principal.user_id)
    reply = await actor_call(_shard(order_id).cancel.remote(order_id, principal.user_id), "Orders")
    if not reply["ok"]:
        if reply["code"] == "not-found":
            raise Problem(404, "not-found", "No such order.")
        raise Problem(409, "not-cancellable", "This order can no longer be cancelled.")
    return render(reply["order"])


class Ship(Input):
    carrier: Annotated[str, Field(min_length=1, max_length=60)] | None = None


class Review(Input):
    decision: Literal["approve", "reject"]


async def _operate(order_id: str, action: str, note: str | None = None) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9a-f-]{36}", order_id):
        raise Problem(404, "not-found", "No such order.")
    await runtime().ready()
    reply = await actor_call(_shard(order_id).operate.remote(order_id, action, note), "Orders")
    if not reply["ok"]:
        if reply["code"] == "not-found":
            raise Problem(404, "not-found", "No such order.")
        status = reply["order"]["status"]
        raise Problem(409, "wrong-status", f"The order is {status}; not possible: {action}.")
    return render(reply["order"])


@router.post("/v1/admin/orders/{order_id}/ship", openapi_extra=ADMIN, tags=["admin"])
async def ship_order(order_id: str, body: Ship, _admin: Admin) -> dict[str, Any]:
    """Mark a confirmed order shipped (it can no longer be cancelled by the shopper)."""
    return await _operate(order_id, "ship", body.carrier)


@router.post("/v1/admin/orders/{order_id}/refund", openapi_extra=ADMIN, tags=["admin"])
async def refund_order(order_id: str, _admin: Admin) -> dict[str, Any]:
    """Refund a confirmed or shipped order in full (idempotent)."""
    return await _operate(order_id, "refund")


@router.post("/v1/admin/orders/{order_id}/review", openapi_extra=ADMIN, tags=["admin"])
async def review_order(order_id: str, body: Review, _admin: Admin) -> dict[str, Any]:
    """Decide an order held for fraud review: approve runs the rest of the checkout."""
    return await _operate(order_id, body.decision)


@router.post(
    "/v1/payments/webhooks/{gateway}", openapi_extra={"x-required-role": "public"},
    tags=["payments"], responses={400: {"description": "bad signature: nothing changes"}},
)  # fmt: skip
async def payment_webhook(gateway: str, request: Request) -> dict[str, Any]:
    """Signed callbacks from a payment provider (``Agora-Signature: t=...,v1=...``)."""
    import time as _time

    from cluster.adapters.webhooks import verify
    from cluster.services import pix_webhook_secret

    if gateway != "pix":
        raise Problem(404, "not-found", "No such payment gateway.")
    payload = await request.body()
    signature = request.headers.get("agora-signature")
    if not verify(pix_webhook_secret(), signature, payload, int(_time.time())):
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
    reply = await actor_call(_shard(order_id).pix_paid.remote(order_id, amount), "Orders")
    if not reply["ok"] and reply["code"] == "amount-mismatch":
        raise Problem(422, "amount-mismatch", "The paid amount does not match the charge.")
    return {"received": True, "order_status": reply.get("status")}
