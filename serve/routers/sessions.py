"""A user's sessions (devices): list them, end one (API.md, "Auth and account").

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field

from serve.auth import flows
from serve.auth.principal import SHOPPER, User
from serve.problems import Problem, actor_call
from serve.runtime import runtime

router = APIRouter(tags=["auth"])


@router.get("/v1/auth/sessions", openapi_extra=SHOPPER)
async def list_sessions(principal: User) -> dict[str, Any]:
    """This user's active sessions (devices), newest first."""
    rt = await runtime().ready()
    items = await actor_call(flows.sessions(rt).active(principal.user_id), "Sessions")
    items.sort(key=lambda s: s["created_at_ms"], reverse=True)
    for item in items:
        item["current"] = item["id"] == principal.session_id
    return {"items": items, "next_cursor": None}


@router.delete(
    "/v1/auth/sessions/{session_id}",
    status_code=204,
    openapi_extra=SHOPPER,
    responses={404: {"description": "no such active session"}},
)
async def end_session(
    session_id: Annotated[str, Field(max_length=64)], principal: User
) -> Response:
    """End one of this user's sessions (e.g. a lost device)."""
    rt = await runtime().ready()
    ended = await actor_call(
        flows.sessions(rt).revoke(principal.user_id, session_id[:64], "ended-by-user"), "Sessions"
    )
    if not ended:
        raise Problem(404, "not-found", "No such active session.")
    await flows.end_session_tokens(rt, session_id, "ended")
    return Response(status_code=204)
