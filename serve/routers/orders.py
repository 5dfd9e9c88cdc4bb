"""Order routes (API.md, "Checkout and orders"): the caller's orders, cancel, and the
operator's ship / refund / review. The order's shard decides every transition.
Each operator action that the shard accepts records who acted (``admin.action``
for the audit log, ``serve.routers.audit.record_admin_action``).

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from actors.clients import OrderClient
from actors.messages import Rejected
from ledger import store as ledger_store
from serve.auth.principal import ADMIN, SHOPPER, Admin, Principal, User
from serve.cursors import decode_cursor, page
from serve.problems import Problem, actor_call, rejected
from serve.routers.audit import record_admin_action
from serve.runtime import runtime
from serve.schemas import Input, money

router = APIRouter(tags=["orders"])

_MONEY_TOTALS = ("subtotal", "discount_total", "shipping", "tax", "total")


def render(order: dict[str, Any]) -> dict[str, Any]:
    """Money as ``{amount, currency}`` (API.md), whatever the shard stores."""
    currency = (order.get("totals") or {}).get("currency", "BRL")
    out = dict(order)
    out["lines"] = [
        {
            **line,
            "unit_price": money(line["unit_price"], currency),
            "line_total": money(line["line_total"], currency),
        }
        for line in order.get("lines", [])
    ]
    totals = dict(order.get("totals") or {})
    for name in _MONEY_TOTALS:
        if isinstance(totals.get(name), int):
            totals[name] = money(totals[name], currency)
    out["totals"] = totals
    return out


def order_client() -> OrderClient:
    return OrderClient(runtime().directory)


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
            principal.user_id,
            after,
            limit + 1,
        )
    rows, next_cursor = page(rows, limit, "order_id")
    return {"items": [render(_summary(r["data"])) for r in rows], "next_cursor": next_cursor}


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["order_id"],
        "status": doc["status"],
        "totals": doc["totals"],
        "lines": doc["lines"],
        "history": doc["history"],
        "created_at_ms": doc["created_ms"],
    }


async def _own_order(order_id: str, user_id: str) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9a-f-]{36}", order_id):
        raise Problem(404, "not-found", "No such order.")
    await runtime().ready()
    reply = await actor_call(order_client().get(order_id), "Orders")
    if reply is None:
        raise Problem(404, "not-found", "No such order.")
    order = reply.order
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
    "/v1/orders/{order_id}/cancel",
    openapi_extra=SHOPPER,
    responses={409: {"description": "already shipped or not cancellable"}},
)
async def cancel_order(order_id: str, principal: User) -> dict[str, Any]:
    """Cancel before shipment: the payment is refunded and the stock put back."""
    await _own_order(order_id, principal.user_id)
    reply = await actor_call(order_client().cancel(order_id, principal.user_id), "Orders")
    if isinstance(reply, Rejected):
        raise rejected(reply)
    return render(reply.order)


class Ship(Input):
    carrier: Annotated[str, Field(min_length=1, max_length=60)] | None = None


class Review(Input):
    decision: Literal["approve", "reject"]


async def _operate(
    order_id: str,
    action: str,
    admin: Principal,
    audit: tuple[str, dict[str, Any]],
    note: str | None = None,
) -> dict[str, Any]:
    """Run ``action`` on the order's shard; once accepted, audit it as ``audit``."""
    if not re.fullmatch(r"[0-9a-f-]{36}", order_id):
        raise Problem(404, "not-found", "No such order.")
    rt = await runtime().ready()
    reply = await actor_call(order_client().operate(order_id, action, note), "Orders")
    if isinstance(reply, Rejected):
        raise rejected(reply)
    audit_action, details = audit
    await record_admin_action(
        rt, admin, audit_action, order_id, {**details, "status": reply.order.get("status")}
    )
    return render(reply.order)


@router.post("/v1/admin/orders/{order_id}/ship", openapi_extra=ADMIN, tags=["admin"])
async def ship_order(order_id: str, body: Ship, admin: Admin) -> dict[str, Any]:
    """Mark a confirmed order shipped (it can no longer be cancelled by the shopper)."""
    audit = ("order.ship", {"carrier": body.carrier})
    return await _operate(order_id, "ship", admin, audit, body.carrier)


@router.post("/v1/admin/orders/{order_id}/refund", openapi_extra=ADMIN, tags=["admin"])
async def refund_order(order_id: str, admin: Admin) -> dict[str, Any]:
    """Refund a confirmed or shipped order in full (idempotent)."""
    return await _operate(order_id, "refund", admin, ("order.refund", {}))


@router.post("/v1/admin/orders/{order_id}/review", openapi_extra=ADMIN, tags=["admin"])
async def review_order(order_id: str, body: Review, admin: Admin) -> dict[str, Any]:
    """Decide an order held for fraud review: approve runs the rest of the checkout."""
    audit = ("order.review", {"decision": body.decision})
    return await _operate(order_id, body.decision, admin, audit)


@router.get(
    "/v1/orders/{order_id}/proof",
    openapi_extra=SHOPPER,
    responses={404: {"description": "no such order, or not anchored yet (anchoring: pending)"}},
)
async def order_proof(order_id: str, principal: User) -> dict[str, Any]:
    """The order's ledger proof: leaf, Merkle path, root, chain, contract, transaction, block.

    Check it with ``python -m ledger.verify PROOF.json --rpc URL`` against any node of
    that chain. The owner or an admin may read it; anyone else gets the same 404 as
    for an unknown order.
    """
    if not re.fullmatch(r"[0-9a-f-]{36}", order_id):
        raise Problem(404, "not-found", "No such order.")
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        owner = await conn.fetchval("SELECT user_id FROM orders WHERE order_id = $1", order_id)
        if owner is None or (owner != principal.user_id and "admin" not in principal.roles):
            raise Problem(404, "not-found", "No such order.")
        proof = await ledger_store.proof_for(conn, ledger_store.ORDER_KIND, order_id)
    if proof is None or not proof.pop("anchored"):
        raise Problem(
            404,
            "not-found",
            "The order is not anchored yet; try again shortly.",
            anchoring="pending",
        )
    return proof
