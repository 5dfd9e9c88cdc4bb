"""Operator webhooks (role ``admin``): register, list, delete; delivery log and redelivery.

``POST /v1/admin/webhooks`` ``{url, events, secret}`` -> 201 (the secret is never
returned). URLs pointing at private, loopback or reserved addresses are refused
(422) unless ``AGORA_WEBHOOKS_ALLOW_PRIVATE`` is on. Deliveries are signed
(``Agora-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``) and
retried with exponential backoff for 24 h, then dead-lettered
(``streams.consumers.webhooks``). Each change is recorded in the audit log.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from cluster.adapters.webhook_delivery import refusal
from cluster.crypto import secretbox
from serve.auth.principal import ADMIN, Admin
from serve.cursors import decode_cursor, encode_cursor
from serve.problems import Problem
from serve.routers.audit import record_admin_action
from serve.runtime import runtime
from serve.schemas import Input
from streams.consumers.audit import rfc3339
from streams.consumers.webhooks import subscribable_events

router = APIRouter(tags=["admin"])

WebhookId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^wh_[0-9a-f]{32}$")]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


EventName = Annotated[str, Field(max_length=64)]


class NewWebhook(Input):
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    events: Annotated[
        list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=50)
    ]
    secret: Annotated[str, Field(min_length=16, max_length=200)]


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    created_by: str
    created_at: str


class WebhookPage(BaseModel):
    items: list[WebhookView]
    next_cursor: str | None


class DeliveryView(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str = Field(description="pending, delivered or dead")
    attempts: int
    created_at: str
    next_attempt_at: str | None
    last_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    delivered_at: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    next_cursor: str | None


def _when(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row["webhook_id"],
        "url": row["url"],
        "events": list(row["events"]),
        "created_by": row["created_by"],
        "created_at": rfc3339(row["created_at"]),
    }


def _invalid(field: str, message: str) -> Problem:
    errors = [{"field": f"body.{field}", "message": message}]
    return Problem(422, "validation", "The request has invalid fields.", errors=errors)


@router.post(
    "/v1/admin/webhooks",
    status_code=201,
    response_model=WebhookView,
    openapi_extra=ADMIN,
    responses={422: {"description": "invalid fields, or a URL that is not allowed"}},
)
async def create_webhook(body: NewWebhook, admin: Admin) -> Any:
    """Register a webhook for the listed event types (``order.confirmed``, ...)."""
    known = set(subscribable_events())
    unknown = sorted(set(body.events) - known)
    if unknown:
        raise _invalid("events", f"unknown event types {unknown}; choose from {sorted(known)}")
    rt = await runtime().ready()
    reason = await refusal(body.url.strip(), rt.settings.webhooks_allow_private)
    if reason is not None:
        raise _invalid("url", f"the URL {reason}")
    webhook_id = f"wh_{uuid.uuid4().hex}"
    events = sorted(set(body.events))
    async with rt.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO webhooks (webhook_id, url, events, secret, created_by)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            webhook_id,
            body.url.strip(),
            events,
            secretbox.seal(body.secret, secretbox.WEBHOOK_SECRET, webhook_id),
            admin.user_id,
        )
        details = {"url": body.url.strip(), "events": events}
        await record_admin_action(rt, admin, "webhook.create", webhook_id, details, conn)
    return _view(row)


@router.get("/v1/admin/webhooks", response_model=WebhookPage, openapi_extra=ADMIN)
async def list_webhooks(_admin: Admin, limit: Limit = 50, cursor: Cursor = None) -> Any:
    """Live webhooks, oldest first (secrets are never shown)."""
    after = decode_cursor(cursor)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM webhooks WHERE deleted_at IS NULL"
            " AND ($1::text IS NULL OR webhook_id > $1) ORDER BY webhook_id LIMIT $2",
            after,
            limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["webhook_id"]) if more else None
    return {"items": [_view(r) for r in rows], "next_cursor": next_cursor}


@router.delete(
    "/v1/admin/webhooks/{webhook_id}",
    status_code=204,
    openapi_extra=ADMIN,
    responses={404: {"description": "no such webhook"}},
)
async def delete_webhook(webhook_id: WebhookId, admin: Admin) -> Response:
    """Stop delivering to this webhook (pending deliveries are dropped)."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        gone = await conn.fetchval(
            "UPDATE webhooks SET deleted_at = now() WHERE webhook_id = $1"
            " AND deleted_at IS NULL RETURNING 1",
            webhook_id,
        )
        if not gone:
            raise Problem(404, "not-found", "No such webhook.")
        await record_admin_action(rt, admin, "webhook.delete", webhook_id, {}, conn)
    return Response(status_code=204)


@router.get(
    "/v1/admin/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    openapi_extra=ADMIN,
)
async def deliveries(
    webhook_id: WebhookId,
    _admin: Admin,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|dead)$")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Any:
    """The delivery log of one webhook, newest first."""
    after = decode_cursor(cursor)
    if after is not None and not (after.isdigit() and len(after) <= 19):
        raise Problem(400, "invalid-cursor", "The cursor is not one this API issued.")
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM webhooks WHERE webhook_id = $1", webhook_id):
            raise Problem(404, "not-found", "No such webhook.")
        rows = await conn.fetch(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1"
            " AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR delivery_id < $3)"
            " ORDER BY delivery_id DESC LIMIT $4",
            webhook_id,
            status,
            None if after is None else int(after),
            limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": str(r["delivery_id"]),
            "event_id": str(r["event_id"]),
            "event_type": r["event_type"],
            "status": r["status"],
            "attempts": r["attempts"],
            "created_at": rfc3339(r["created_at"]),
            "next_attempt_at": _when(r["next_attempt_at"]) if r["status"] == "pending" else None,
            "last_attempt_at": _when(r["last_attempt_at"]),
            "last_status": r["last_status"],
            "last_error": r["last_error"],
            "delivered_at": _when(r["delivered_at"]),
        }
        for r in rows
    ]
    next_cursor = encode_cursor(str(rows[-1]["delivery_id"])) if more else None
    return {"items": items, "next_cursor": next_cursor}


@router.post(
    "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    openapi_extra=ADMIN,
    responses={404: {"description": "no such delivery"}},
)
async def redeliver(
    webhook_id: WebhookId,
    delivery_id: Annotated[int, Path(ge=1, le=2**62)],
    admin: Admin,
) -> dict[str, str]:
    """Queue a delivery again now (a dead one gets a fresh 24 h of retries)."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval(
            "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now(),"
            " attempts = 0, created_at = now() FROM webhooks w"
            " WHERE d.delivery_id = $1 AND d.webhook_id = $2 AND w.webhook_id = d.webhook_id"
            " AND w.deleted_at IS NULL RETURNING 1",
            delivery_id,
            webhook_id,
        )
        if not found:
            raise Problem(404, "not-found", "No such delivery.")
        target = f"{webhook_id}/{delivery_id}"
        await record_admin_action(rt, admin, "webhook.redeliver", target, {}, conn)
    return {"status": "pending"}
