"""The audit log (operators): ``GET /v1/admin/audit``, and how a route records who acted.

Operator routes call ``record_admin_action`` after the change succeeded: it
queues an ``admin.action`` event (actor = the operator's user id) in the
outbox; the audit consumer appends it to the hash-chained ``audit_log``
(``streams.consumers.audit``). Security events (``auth.*``, ``user.erased``)
reach the log from their own events.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from actors.messages import now_ms
from actors.writebehind import insert_outbox
from serve.auth.principal import ADMIN, Admin, Principal
from serve.cursors import decode_cursor, encode_cursor
from serve.problems import Problem
from serve.runtime import Runtime, runtime
from streams.consumers.audit import rfc3339
from streams.events import ADMIN_ACTION, make_event

router = APIRouter(tags=["admin"])


async def record_admin_action(
    rt: Runtime,
    admin: Principal,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
    conn: Any = None,
) -> None:
    """Queue ``admin.action`` (who did what to which target); in ``conn``'s transaction if given."""
    payload = {
        "actor": admin.user_id,
        "action": action,
        "target": target,
        "details": details or {},
    }
    event = make_event(ADMIN_ACTION, admin.user_id, payload, now_ms())
    s = rt.settings
    if conn is not None:
        await insert_outbox(conn, [event], s.events_tenant, s.events_namespace)
        return
    async with rt.pool.acquire() as own:
        await insert_outbox(own, [event], s.events_tenant, s.events_namespace)


class AuditRecord(BaseModel):
    seq: int
    event_id: str
    at: str
    actor: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None


Text = Annotated[str | None, Query(min_length=1, max_length=100)]
When = Annotated[datetime | None, Query(description="RFC 3339 with an offset")]


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        errors = [{"field": f"query.{name}", "message": "must carry a UTC offset (e.g. Z)"}]
        raise Problem(422, "validation", "The request has invalid fields.", errors=errors)
    return value


@router.get("/v1/admin/audit", response_model=AuditPage, openapi_extra=ADMIN)
async def audit_log(
    _admin: Admin,
    actor: Text = None,
    action: Text = None,
    since: When = None,
    until: When = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    """The audit log, newest first. ``since`` is inclusive, ``until`` exclusive."""
    after = decode_cursor(cursor)
    before_seq: int | None = None
    if after is not None:
        if not after.isdigit() or len(after) > 19:
            raise Problem(400, "invalid-cursor", "The cursor is not one this API issued.")
        before_seq = int(after)
    since, until = _aware("since", since), _aware("until", until)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT seq, event_id, at, actor, action, target, details::text AS details,"
            " prev_hash, hash FROM audit_log"
            " WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)"
            " AND ($3::timestamptz IS NULL OR at >= $3) AND ($4::timestamptz IS NULL OR at < $4)"
            " AND ($5::bigint IS NULL OR seq < $5)"
            " ORDER BY seq DESC LIMIT $6",
            actor,
            action,
            since,
            until,
            before_seq,
            limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            **dict(r),
            "event_id": str(r["event_id"]),
            "at": rfc3339(r["at"]),
            "details": _details(r["details"]),
        }
        for r in rows
    ]
    return {"items": items, "next_cursor": encode_cursor(str(rows[-1]["seq"])) if more else None}


def _details(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}
