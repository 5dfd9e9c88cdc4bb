"""Sign-up and sign-in (API.md, "Auth and account"): register, the OAuth2 token endpoint
(password and refresh grants), the MFA step of a login, logout, and the JWKS.

``router`` also carries the other identity routers (``mfa``, ``sessions``,
``account``), so the app includes identity once. No ``from __future__ import
annotations``: FastAPI reads the annotations.
"""

import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from actors.session.passwords import check_password, normalise_email
from cluster.adapters import accounts
from serve.auth import flows, totp
from serve.auth.principal import PUBLIC, SHOPPER, User
from serve.auth.schemas import MfaLogin, PasswordGrant, RefreshGrant, Register, TokenReply
from serve.auth.tokens import token_hash
from serve.problems import Problem, actor_call, rate_limited
from serve.routers import account, mfa, sessions
from serve.runtime import Runtime, runtime
from streams.events import AUTH_LOGIN_FAILED, USER_REGISTERED, uuid7

router = APIRouter(tags=["auth"])


@router.post(
    "/v1/auth/register",
    status_code=201,
    openapi_extra=PUBLIC,
    responses={409: {"description": "the email is taken"}},
)
async def register(body: Register, request: Request) -> dict[str, str]:
    """Create a shopper account."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    email = normalise_email(body.email)
    if email is None:
        errors = [{"field": "body.email", "message": "not a valid email address"}]
        raise Problem(422, "validation", "The email address is not valid.", errors=errors)
    reason = check_password(body.password, email=email, name=body.name)
    if reason:
        errors = [{"field": "body.password", "message": reason}]
        raise Problem(422, "weak-password", reason, errors=errors)
    password_hash = await flows.hash_password(body.password)
    user_id = str(uuid7())
    async with rt.pool.acquire() as conn, conn.transaction():
        created = await accounts.create_user(conn, user_id, email, body.name.strip(), password_hash)
        if not created:
            raise Problem(409, "email-taken", "An account with this email already exists.")
        await flows.emit(conn, USER_REGISTERED, user_id, {"user_id": user_id})
    return {"user_id": user_id}


async def _token_body(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        data = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-json", "The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise Problem(400, "invalid_request", "Send a JSON object or a form.")
    return data


@router.post(
    "/v1/auth/token",
    response_model=TokenReply,
    openapi_extra=PUBLIC,
    responses={
        401: {"description": "invalid credentials, or mfa_required with an mfa_token"},
        429: {"description": "too many attempts"},
    },
)
async def token(request: Request) -> Any:
    """OAuth2 token endpoint: ``grant_type=password`` or ``grant_type=refresh_token``."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    data = await _token_body(request)
    grant = data.get("grant_type")
    try:
        if grant == "password":
            return await _password_grant(rt, request, PasswordGrant.model_validate(data))
        if grant == "refresh_token":
            return await _refresh_grant(rt, RefreshGrant.model_validate(data))
    except ValidationError as exc:
        fields = [
            {"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()
        ]
        raise Problem(422, "validation", "The request has invalid fields.", errors=fields) from exc
    raise Problem(400, "unsupported_grant_type", "grant_type must be password or refresh_token.")


async def _password_grant(rt: Runtime, request: Request, body: PasswordGrant) -> dict:
    _ip_limit, failures = flows.limits(rt)
    email = normalise_email(body.username) or body.username.strip().lower()[:254]
    decision = await rt.limiter.hit(failures, email)
    if not decision.allowed:
        raise rate_limited(
            "Too many failed logins for this account; try later.", decision.retry_after_s
        )
    async with rt.pool.acquire() as conn:
        user = await accounts.login_by_email(conn, email)
    ok = await flows.verify_password(user["password_hash"] if user else None, body.password)
    if not ok or user is None:
        user_id = user["user_id"] if user else None
        async with rt.pool.acquire() as conn:
            await flows.emit(
                conn,
                AUTH_LOGIN_FAILED,
                user_id or "unknown",
                {"user_id": user_id, "reason": "invalid-credentials"},
            )
        raise flows.invalid_grant("The email or password is wrong.")
    await rt.limiter.refund(failures, email)
    if user["mfa_secret"]:
        mfa_token = secrets.token_urlsafe(32)
        ttl = rt.settings.mfa_token_ttl_s
        await rt.redis.set(
            f"mfa:{token_hash(mfa_token)}", json.dumps({"user_id": user["user_id"]}), ex=ttl
        )
        raise flows.problem_401(
            "mfa_required",
            "Enter the code from your authenticator app.",
            error="mfa_required",
            mfa_token=mfa_token,
            expires_in=ttl,
        )
    return await flows.start_session(rt, request, user)


async def _refresh_grant(rt: Runtime, body: RefreshGrant) -> dict:
    parts = flows.refresh_parts(body.refresh_token)
    if parts is None:
        raise flows.invalid_grant("The refresh token is invalid.")
    user_id, sid = parts
    async with rt.pool.acquire() as conn:
        roles = await accounts.roles_of(conn, user_id)
    if roles is None:
        raise flows.invalid_grant("The refresh token is invalid.")
    new = flows.new_refresh(user_id, sid)
    refused = await actor_call(
        flows.sessions(rt).rotate(user_id, sid, token_hash(body.refresh_token), token_hash(new)),
        "Sessions",
    )
    if refused is not None:
        if refused.code == "reused":
            await flows.end_session_tokens(rt, sid, "reused")
        raise flows.invalid_grant("The refresh token is invalid, used or expired.")
    return await flows.issue(rt, user_id, roles, sid, new)


@router.post(
    "/v1/auth/mfa",
    response_model=TokenReply,
    openapi_extra=PUBLIC,
    responses={401: {"description": "wrong or reused code"}},
)
async def mfa_login(body: MfaLogin, request: Request) -> Any:
    """Finish a login that answered ``mfa_required``: a TOTP or a recovery code."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    key = f"mfa:{token_hash(body.mfa_token)}"
    raw = await rt.redis.get(key)
    if raw is None:
        raise flows.invalid_grant("The MFA token is invalid or expired.")
    user_id = json.loads(raw)["user_id"]
    # Reserve a try before checking the code, atomically, so parallel guesses on one
    # token cannot exceed the cap; failures also count per account (not refunded by
    # a correct password), and a success gives the account's unit back.
    tries = await rt.redis.incr(key + ":tries")
    await rt.redis.expire(key + ":tries", rt.settings.mfa_token_ttl_s)
    mfa_failures = flows.mfa_limit(rt)
    decision = await rt.limiter.hit(mfa_failures, user_id)
    if tries > flows.MFA_TRIES_PER_TOKEN or not decision.allowed:
        await rt.redis.delete(key)
        raise rate_limited("Too many wrong codes; log in again later.", decision.retry_after_s)
    async with rt.pool.acquire() as conn:
        user = await accounts.mfa_state(conn, user_id)
        accepted = user is not None and await _accept_code(conn, user, body.code)
    if not accepted or user is None:
        raise flows.invalid_grant("The code is wrong or was already used.")
    if not await rt.redis.delete(key):
        raise flows.invalid_grant("The MFA token was already used.")
    await rt.limiter.refund(mfa_failures, user_id)
    return await flows.start_session(rt, request, user)


async def _accept_code(conn: Any, user: dict[str, Any], code: str) -> bool:
    """A TOTP code newer than the last one used (no replay), or an unused recovery code."""
    code = code.strip()
    if user["mfa_secret"] and code.isdigit():
        step = totp.verify_code(user["mfa_secret"], code, int(time.time()), user["mfa_last_step"])
        if step is None:
            return False
        return await accounts.advance_totp_step(conn, user["user_id"], step)
    return await accounts.use_recovery_code(conn, user["user_id"], totp.hash_recovery_code(code))


@router.post("/v1/auth/logout", status_code=204, openapi_extra=SHOPPER)
async def logout(principal: User) -> Response:
    """End this session: its refresh-token family and this access token."""
    rt = await runtime().ready()
    await actor_call(
        flows.sessions(rt).revoke(principal.user_id, principal.session_id, "logout"), "Sessions"
    )
    await flows.end_session_tokens(rt, principal.session_id, "logout")
    await flows.revoke_access(rt, principal)
    return Response(status_code=204)


@router.get("/.well-known/jwks.json", openapi_extra=PUBLIC)
async def jwks() -> dict[str, Any]:
    """Public keys that verify access tokens (ES256)."""
    rt = await runtime().keys()
    return rt.jwks


for _concern in (mfa.router, sessions.router, account.router):
    router.include_router(_concern)
