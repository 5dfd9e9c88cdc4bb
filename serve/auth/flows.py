"""What the auth routers share: rate limits, password checks off the event loop, events,
refresh-token shape, issuing tokens and opening a session (with the login cart merge).

No ``from __future__ import annotations``: kept like the routers for uniformity.
"""

import asyncio
import time
import uuid
from typing import Any

from fastapi import Request

from actors.clients import SessionClient
from actors.messages import now_ms
from actors.session.passwords import PasswordHasher
from cluster.adapters import accounts
from serve.auth.principal import Principal, revocation_keys
from serve.auth.tokens import new_refresh_token, token_hash
from serve.middleware import request_ip
from serve.problems import Problem, actor_call, rate_limited
from serve.ratelimit import Limit
from serve.routers.cart import merge_anonymous_cart
from serve.runtime import Runtime, runtime
from streams.events import AUTH_LOGGED_IN, EventType, make_event

MFA_TRIES_PER_TOKEN = 5
_HASHER = PasswordHasher()


def mfa_limit(rt: Runtime) -> Limit:
    s = rt.settings
    return Limit("mfa-failures", s.login_failures_per_account, s.login_failures_period_s)


def limits(rt: Runtime) -> tuple[Limit, Limit]:
    """(requests per client IP, failed logins per account)."""
    s = rt.settings
    return (
        Limit("auth-ip", s.auth_requests_per_ip, s.auth_requests_period_s),
        Limit("login-failures", s.login_failures_per_account, s.login_failures_period_s),
    )


async def limit_ip(rt: Runtime, request: Request) -> None:
    decision = await rt.limiter.hit(limits(rt)[0], request_ip(request))
    if not decision.allowed:
        raise rate_limited("Too many authentication requests; slow down.", decision.retry_after_s)


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _HASHER.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """Check ``password``; with no stored hash, spend the same time and answer False."""
    loop = asyncio.get_running_loop()
    if stored is None:
        return await loop.run_in_executor(None, _HASHER.verify_dummy, password)
    return await loop.run_in_executor(None, _HASHER.verify, stored, password)


async def emit(conn: Any, event_type: EventType, key: str, payload: dict[str, Any]) -> None:
    """Queue an identity event in the outbox, in the caller's transaction."""
    s = runtime().settings
    event = make_event(event_type, key, payload, now_ms())
    await accounts.emit(conn, event, s.events_tenant, s.events_namespace)


def refresh_parts(token: str) -> tuple[str, str] | None:
    """``rt.<user id>.<session id>.<secret>`` → (user id, session id)."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "rt" or not all(parts):
        return None
    if len(parts[1]) > 64 or len(parts[2]) > 64:
        return None
    return parts[1], parts[2]


def new_refresh(user_id: str, sid: str) -> str:
    return f"rt.{user_id}.{sid}.{new_refresh_token()}"


def sessions(rt: Runtime) -> SessionClient:
    return SessionClient(rt.directory)


async def issue(rt: Runtime, user_id: str, roles: list[str], sid: str, refresh: str) -> dict:
    """An access token for the session, with its refresh token."""
    await rt.keys()
    access, _claims = rt.issuer.issue(user_id, roles, int(time.time()), sid)
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": rt.settings.access_token_ttl_s,
        "refresh_token": refresh,
    }


async def start_session(rt: Runtime, request: Request, user: dict[str, Any]) -> dict:
    """Open a session for a user who proved who they are; merge their anonymous cart."""
    user_id = user["user_id"]
    sid = uuid.uuid4().hex
    refresh = new_refresh(user_id, sid)
    device = request.headers.get("user-agent", "unknown")[:200]
    lifetime_ms = rt.settings.refresh_token_ttl_days * 86_400_000
    await actor_call(
        sessions(rt).open(user_id, sid, token_hash(refresh), device, lifetime_ms), "Sessions"
    )
    async with rt.pool.acquire() as conn:
        await emit(conn, AUTH_LOGGED_IN, user_id, {"user_id": user_id, "session_id": sid})
    await merge_anonymous_cart(rt, request, user_id)
    return await issue(rt, user_id, list(user["roles"]), sid, refresh)


def problem_401(kind: str, detail: str, **extra: Any) -> Problem:
    return Problem(401, kind, detail, headers={"WWW-Authenticate": 'Bearer realm="agora"'}, **extra)


def invalid_grant(detail: str) -> Problem:
    return problem_401("invalid_grant", detail, error="invalid_grant")


def revocation_ttl(rt: Runtime) -> int:
    return rt.settings.access_token_ttl_s + rt.settings.jwt_leeway_s + 5


async def revoke_access(rt: Runtime, principal: Principal) -> None:
    """Refuse this access token until it expires."""
    remaining = max(1, principal.exp - int(time.time()) + rt.settings.jwt_leeway_s)
    await rt.redis.set(revocation_keys(principal.jti, "-", "-")[0], "1", ex=remaining)


async def end_session_tokens(rt: Runtime, session_id: str, reason: str) -> None:
    """Refuse every access token of the session until they expire."""
    await rt.redis.set(revocation_keys("-", session_id, "-")[1], reason, ex=revocation_ttl(rt))
