"""Accounts, tokens, MFA, sessions and GDPR routes (API.md, "Auth and account").

Plain FastAPI functions on a router that the ``Api`` ingress includes. No
``from __future__ import annotations``: FastAPI reads the annotations.
"""

import asyncio
import json
import secrets
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.writebehind import insert_outbox
from serve.auth import totp
from serve.auth.passwords import PasswordHasher, check_password, mask_email, normalise_email
from serve.auth.principal import PUBLIC, SHOPPER, Principal, User, revocation_keys
from serve.auth.tokens import new_refresh_token, token_hash
from serve.middleware import request_ip
from serve.problems import Problem, actor_call, rate_limited
from serve.ratelimit import Limit
from serve.routers.cart import merge_anonymous_cart
from serve.runtime import Runtime, runtime
from streams.events import (
    AUTH_LOGGED_IN,
    AUTH_LOGIN_FAILED,
    AUTH_MFA_ENABLED,
    USER_ERASED,
    USER_REGISTERED,
    USER_UPDATED,
    EventType,
    make_event,
    uuid7,
)

router = APIRouter(tags=["auth"])
_HASHER = PasswordHasher()


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Register(Input):
    email: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]
    name: Annotated[str, Field(min_length=1, max_length=100)]


class PasswordGrant(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grant_type: Literal["password"]
    username: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]


class RefreshGrant(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grant_type: Literal["refresh_token"]
    refresh_token: Annotated[str, Field(max_length=400)]


class MfaLogin(Input):
    mfa_token: Annotated[str, Field(max_length=200)]
    code: Annotated[str, Field(max_length=40)]


class MfaConfirm(Input):
    code: Annotated[str, Field(max_length=12)]


class ProfilePatch(Input):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    preferences: dict[str, str | int | bool] | None = None
    consents: dict[str, bool] | None = None


class TokenReply(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type
    expires_in: int
    refresh_token: str


# --- helpers -------------------------------------------------------------------


MFA_TRIES_PER_TOKEN = 5


def _mfa_limit(rt: Runtime) -> Limit:
    s = rt.settings
    return Limit("mfa-failures", s.login_failures_per_account, s.login_failures_period_s)


def _limits(rt: Runtime) -> tuple[Limit, Limit]:
    s = rt.settings
    return (
        Limit("auth-ip", s.auth_requests_per_ip, s.auth_requests_period_s),
        Limit("login-failures", s.login_failures_per_account, s.login_failures_period_s),
    )


async def _limit_ip(rt: Runtime, request: Request) -> None:
    decision = await rt.limiter.hit(_limits(rt)[0], request_ip(request))
    if not decision.allowed:
        raise rate_limited("Too many authentication requests; slow down.", decision.retry_after_s)


async def _hash(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _HASHER.hash, password)


async def _verify(stored: str | None, password: str) -> bool:
    loop = asyncio.get_running_loop()
    if stored is None:
        return await loop.run_in_executor(None, _HASHER.verify_dummy, password)
    return await loop.run_in_executor(None, _HASHER.verify, stored, password)


async def _outbox(conn: Any, event_type: EventType, key: str, payload: dict[str, Any]) -> None:
    s = runtime().settings
    event = make_event(event_type, key, payload, int(time.time() * 1000))
    await insert_outbox(conn, [event], s.events_tenant, s.events_namespace)


def _refresh_parts(token: str) -> tuple[str, str] | None:
    """``rt.<user id>.<session id>.<secret>`` → (user id, session id)."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "rt" or not all(parts):
        return None
    if len(parts[1]) > 64 or len(parts[2]) > 64:
        return None
    return parts[1], parts[2]


def _new_refresh(user_id: str, sid: str) -> str:
    return f"rt.{user_id}.{sid}.{new_refresh_token()}"


def _sessions(rt: Runtime, user_id: str) -> Any:
    return rt.directory.get("session", user_id)


async def _issue(rt: Runtime, user_id: str, roles: list[str], sid: str, refresh: str) -> dict:
    await rt.keys()
    access, _claims = rt.issuer.issue(user_id, roles, int(time.time()), sid)
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": rt.settings.access_token_ttl_s,
        "refresh_token": refresh,
    }


async def _start_session(rt: Runtime, request: Request, user: Any) -> dict:
    sid = uuid.uuid4().hex
    refresh = _new_refresh(user["user_id"], sid)
    device = request.headers.get("user-agent", "unknown")[:200]
    lifetime_ms = rt.settings.refresh_token_ttl_days * 86_400_000
    await actor_call(
        _sessions(rt, user["user_id"]).open.remote(
            user["user_id"], sid, token_hash(refresh), device, lifetime_ms
        )
    )
    async with rt.pool.acquire() as conn:
        await _outbox(conn, AUTH_LOGGED_IN, user["user_id"], {"user_id": user["user_id"],
                                                              "session_id": sid})  # fmt: skip
    await merge_anonymous_cart(rt, request, user["user_id"])
    return await _issue(rt, user["user_id"], list(user["roles"]), sid, refresh)


def _problem_401(kind: str, detail: str, **extra: Any) -> Problem:
    return Problem(401, kind, detail, headers={"WWW-Authenticate": 'Bearer realm="agora"'}, **extra)


# --- accounts ------------------------------------------------------------------


@router.post(
    "/v1/auth/register", status_code=201, openapi_extra=PUBLIC,
    responses={409: {"description": "the email is taken"}},
)  # fmt: skip
async def register(body: Register, request: Request) -> dict[str, str]:
    """Create a shopper account."""
    rt = await runtime().ready()
    await _limit_ip(rt, request)
    email = normalise_email(body.email)
    if email is None:
        raise Problem(
            422, "validation", "The email address is not valid.",
            errors=[{"field": "body.email", "message": "not a valid email address"}],
        )  # fmt: skip
    reason = check_password(body.password, email=email, name=body.name)
    if reason:
        raise Problem(422, "weak-password", reason,
                      errors=[{"field": "body.password", "message": reason}])  # fmt: skip
    password_hash = await _hash(body.password)
    user_id = str(uuid7())
    async with rt.pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            "INSERT INTO users (user_id, email, name, password_hash) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (email) DO NOTHING RETURNING user_id",
            user_id, email, body.name.strip(), password_hash,
        )  # fmt: skip
        if created is None:
            raise Problem(409, "email-taken", "An account with this email already exists.")
        await _outbox(conn, USER_REGISTERED, user_id, {"user_id": user_id})
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
    "/v1/auth/token", response_model=TokenReply, openapi_extra=PUBLIC,
    responses={401: {"description": "invalid credentials, or mfa_required with an mfa_token"},
               429: {"description": "too many attempts"}},
)  # fmt: skip
async def token(request: Request) -> Any:
    """OAuth2 token endpoint: ``grant_type=password`` or ``grant_type=refresh_token``."""
    rt = await runtime().ready()
    await _limit_ip(rt, request)
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
    _ip_limit, failures = _limits(rt)
    email = normalise_email(body.username) or body.username.strip().lower()[:254]
    decision = await rt.limiter.hit(failures, email)
    if not decision.allowed:
        raise rate_limited(
            "Too many failed logins for this account; try later.", decision.retry_after_s
        )
    async with rt.pool.acquire() as conn:
        user = await conn.fetchrow(
            "SELECT user_id, password_hash, roles, mfa_secret FROM users"
            " WHERE email = $1 AND erased_at IS NULL",
            email,
        )
    ok = await _verify(user["password_hash"] if user else None, body.password)
    if not ok:
        async with rt.pool.acquire() as conn:
            await _outbox(conn, AUTH_LOGIN_FAILED, user["user_id"] if user else "unknown",
                          {"user_id": user["user_id"] if user else None,
                           "reason": "invalid-credentials"})  # fmt: skip
        raise _problem_401("invalid_grant", "The email or password is wrong.",
                           error="invalid_grant")  # fmt: skip
    await rt.limiter.refund(failures, email)
    assert user is not None
    if user["mfa_secret"]:
        mfa_token = secrets.token_urlsafe(32)
        await rt.redis.set(
            f"mfa:{token_hash(mfa_token)}", json.dumps({"user_id": user["user_id"]}),
            ex=rt.settings.mfa_token_ttl_s,
        )  # fmt: skip
        raise _problem_401(
            "mfa_required", "Enter the code from your authenticator app.",
            error="mfa_required", mfa_token=mfa_token, expires_in=rt.settings.mfa_token_ttl_s,
        )  # fmt: skip
    return await _start_session(rt, request, user)


async def _refresh_grant(rt: Runtime, body: RefreshGrant) -> dict:
    parts = _refresh_parts(body.refresh_token)
    if parts is None:
        raise _problem_401("invalid_grant", "The refresh token is invalid.", error="invalid_grant")
    user_id, sid = parts
    async with rt.pool.acquire() as conn:
        user = await conn.fetchrow(
            "SELECT user_id, roles FROM users WHERE user_id = $1 AND erased_at IS NULL", user_id
        )
    if user is None:
        raise _problem_401("invalid_grant", "The refresh token is invalid.", error="invalid_grant")
    new = _new_refresh(user_id, sid)
    reply = await actor_call(
        _sessions(rt, user_id).rotate.remote(
            user_id, sid, token_hash(body.refresh_token), token_hash(new)
        )
    )
    if not reply["ok"]:
        if reply["code"] == "reused":
            await rt.redis.set(
                revocation_keys("-", sid, user_id)[1], "reused", ex=_revocation_ttl(rt)
            )
        raise _problem_401("invalid_grant", "The refresh token is invalid, used or expired.",
                           error="invalid_grant")  # fmt: skip
    return await _issue(rt, user_id, list(user["roles"]), sid, new)


def _revocation_ttl(rt: Runtime) -> int:
    return rt.settings.access_token_ttl_s + rt.settings.jwt_leeway_s + 5


@router.post(
    "/v1/auth/mfa", response_model=TokenReply, openapi_extra=PUBLIC,
    responses={401: {"description": "wrong or reused code"}},
)  # fmt: skip
async def mfa_login(body: MfaLogin, request: Request) -> Any:
    """Finish a login that answered ``mfa_required``: a TOTP or a recovery code."""
    rt = await runtime().ready()
    await _limit_ip(rt, request)
    key = f"mfa:{token_hash(body.mfa_token)}"
    raw = await rt.redis.get(key)
    if raw is None:
        raise _problem_401("invalid_grant", "The MFA token is invalid or expired.",
                           error="invalid_grant")  # fmt: skip
    user_id = json.loads(raw)["user_id"]
    # Reserve a try before checking the code, atomically, so parallel guesses on one
    # token cannot exceed the cap; failures also count per account (not refunded by
    # a correct password), and a success gives the account's unit back.
    tries = await rt.redis.incr(key + ":tries")
    await rt.redis.expire(key + ":tries", rt.settings.mfa_token_ttl_s)
    mfa_failures = _mfa_limit(rt)
    decision = await rt.limiter.hit(mfa_failures, user_id)
    if tries > MFA_TRIES_PER_TOKEN or not decision.allowed:
        await rt.redis.delete(key)
        raise rate_limited("Too many wrong codes; log in again later.", decision.retry_after_s)
    async with rt.pool.acquire() as conn:
        user = await conn.fetchrow(
            "SELECT user_id, roles, mfa_secret, mfa_last_step FROM users"
            " WHERE user_id = $1 AND erased_at IS NULL",
            user_id,
        )
        accepted = user is not None and await _accept_code(conn, user, body.code)
    if not accepted:
        raise _problem_401("invalid_grant", "The code is wrong or was already used.",
                           error="invalid_grant")  # fmt: skip
    if not await rt.redis.delete(key):
        raise _problem_401("invalid_grant", "The MFA token was already used.",
                           error="invalid_grant")  # fmt: skip
    await rt.limiter.refund(mfa_failures, user_id)
    return await _start_session(rt, request, user)


async def _accept_code(conn: Any, user: Any, code: str) -> bool:
    """A TOTP code newer than the last one used (no replay), or an unused recovery code."""
    code = code.strip()
    if user["mfa_secret"] and code.isdigit():
        step = totp.verify_code(user["mfa_secret"], code, int(time.time()), user["mfa_last_step"])
        if step is None:
            return False
        moved = await conn.fetchval(
            "UPDATE users SET mfa_last_step = $2 WHERE user_id = $1"
            " AND (mfa_last_step IS NULL OR mfa_last_step < $2) RETURNING 1",
            user["user_id"], step,
        )  # fmt: skip
        return bool(moved)
    used = await conn.fetchval(
        "UPDATE recovery_codes SET used_at = now()"
        " WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING 1",
        user["user_id"], totp.hash_recovery_code(code),
    )  # fmt: skip
    return bool(used)


@router.post("/v1/auth/mfa/enroll", openapi_extra=SHOPPER)
async def mfa_enroll(principal: User, request: Request) -> dict[str, str]:
    """Start TOTP enrolment: a new secret, its otpauth URI and a QR code (SVG)."""
    rt = await runtime().ready()
    await _limit_ip(rt, request)
    secret = totp.new_secret()
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            "UPDATE users SET mfa_pending_secret = $2, updated_at = now()"
            " WHERE user_id = $1 AND mfa_secret IS NULL RETURNING email",
            principal.user_id, secret,
        )  # fmt: skip
    if row is None:
        raise Problem(409, "mfa-already-enabled", "MFA is already on for this account.")
    uri = totp.provisioning_uri(secret, row["email"])
    return {"secret": secret, "otpauth_uri": uri, "qr_svg": totp.qr_svg(uri)}


@router.post("/v1/auth/mfa/confirm", openapi_extra=SHOPPER)
async def mfa_confirm(body: MfaConfirm, principal: User, request: Request) -> dict[str, Any]:
    """Turn MFA on with the first code; answers the one-time recovery codes (shown once)."""
    rt = await runtime().ready()
    await _limit_ip(rt, request)
    async with rt.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT mfa_pending_secret, mfa_secret FROM users WHERE user_id = $1 FOR UPDATE",
            principal.user_id,
        )
        if row is None or row["mfa_secret"] or not row["mfa_pending_secret"]:
            raise Problem(409, "mfa-not-pending", "Start with POST /v1/auth/mfa/enroll.")
        step = totp.verify_code(row["mfa_pending_secret"], body.code, int(time.time()), None)
        if step is None:
            raise Problem(422, "invalid-code", "The code is wrong; check the device clock.")
        codes = totp.new_recovery_codes()
        await conn.execute(
            "UPDATE users SET mfa_secret = mfa_pending_secret, mfa_pending_secret = NULL,"
            " mfa_last_step = $2, updated_at = now() WHERE user_id = $1",
            principal.user_id, step,
        )  # fmt: skip
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", principal.user_id)
        await conn.executemany(
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            [(principal.user_id, totp.hash_recovery_code(c)) for c in codes],
        )
        await _outbox(conn, AUTH_MFA_ENABLED, principal.user_id, {"user_id": principal.user_id})
    return {"mfa_enabled": True, "recovery_codes": codes}


# --- sessions ------------------------------------------------------------------


async def _revoke_access(rt: Runtime, principal: Principal) -> None:
    remaining = max(1, principal.exp - int(time.time()) + rt.settings.jwt_leeway_s)
    await rt.redis.set(revocation_keys(principal.jti, "-", "-")[0], "1", ex=remaining)


@router.post("/v1/auth/logout", status_code=204, openapi_extra=SHOPPER)
async def logout(principal: User) -> Response:
    """End this session: its refresh-token family and this access token."""
    rt = await runtime().ready()
    await actor_call(
        _sessions(rt, principal.user_id).revoke.remote(
            principal.user_id, principal.session_id, "logout"
        )
    )
    await rt.redis.set(
        revocation_keys("-", principal.session_id, "-")[1], "logout", ex=_revocation_ttl(rt)
    )
    await _revoke_access(rt, principal)
    return Response(status_code=204)


@router.get("/v1/auth/sessions", openapi_extra=SHOPPER)
async def list_sessions(principal: User) -> dict[str, Any]:
    """This user's active sessions (devices), newest first."""
    rt = await runtime().ready()
    items = await actor_call(_sessions(rt, principal.user_id).list.remote(principal.user_id))
    items.sort(key=lambda s: s["created_at_ms"], reverse=True)
    for item in items:
        item["current"] = item["id"] == principal.session_id
    return {"items": items, "next_cursor": None}


@router.delete(
    "/v1/auth/sessions/{session_id}", status_code=204, openapi_extra=SHOPPER,
    responses={404: {"description": "no such active session"}},
)  # fmt: skip
async def end_session(
    session_id: Annotated[str, Field(max_length=64)], principal: User
) -> Response:
    """End one of this user's sessions (e.g. a lost device)."""
    rt = await runtime().ready()
    ended = await actor_call(
        _sessions(rt, principal.user_id).revoke.remote(
            principal.user_id, session_id[:64], "ended-by-user"
        )
    )
    if not ended:
        raise Problem(404, "not-found", "No such active session.")
    await rt.redis.set(revocation_keys("-", session_id, "-")[1], "ended", ex=_revocation_ttl(rt))
    return Response(status_code=204)


@router.get("/.well-known/jwks.json", openapi_extra=PUBLIC)
async def jwks() -> dict[str, Any]:
    """Public keys that verify access tokens (ES256)."""
    rt = await runtime().keys()
    return rt.jwks


# --- profile and GDPR ------------------------------------------------------------


async def _profile(conn: Any, user_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT user_id, email, name, roles, mfa_secret IS NOT NULL AS mfa_enabled,"
        " preferences, consents, created_at, updated_at FROM users"
        " WHERE user_id = $1 AND erased_at IS NULL",
        user_id,
    )
    if row is None:
        raise _problem_401("unauthorized", "This account no longer exists.")
    profile = dict(row)
    profile["roles"] = list(profile["roles"])
    for key in ("created_at", "updated_at"):
        profile[key] = profile[key].isoformat().replace("+00:00", "Z")
    return profile


@router.get("/v1/me", openapi_extra=SHOPPER)
async def me(principal: User) -> dict[str, Any]:
    """The caller's profile and preferences."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        return await _profile(conn, principal.user_id)


@router.patch("/v1/me", openapi_extra=SHOPPER)
async def update_me(body: ProfilePatch, principal: User) -> dict[str, Any]:
    """Change name, preferences or consents (other fields are refused)."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE users SET name = COALESCE($2, name),"
            " preferences = preferences || COALESCE($3::text::jsonb, '{}'::jsonb),"
            " consents = consents || COALESCE($4::text::jsonb, '{}'::jsonb), updated_at = now()"
            " WHERE user_id = $1 AND erased_at IS NULL",
            principal.user_id,
            body.name.strip() if body.name else None,
            json.dumps(body.preferences) if body.preferences is not None else None,
            json.dumps(body.consents) if body.consents is not None else None,
        )
        await _outbox(conn, USER_UPDATED, principal.user_id, {"user_id": principal.user_id})
        return await _profile(conn, principal.user_id)


@router.get("/v1/me/export", openapi_extra=SHOPPER)
async def export_me(principal: User) -> dict[str, Any]:
    """Everything held about the caller (GDPR art. 15 / LGPD art. 18)."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        profile = await _profile(conn, principal.user_id)
        recovery = await conn.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
            principal.user_id,
        )
        orders = [
            r["data"] for r in await conn.fetch(
                "SELECT data FROM orders WHERE user_id = $1 ORDER BY created_at", principal.user_id)
        ]  # fmt: skip
    for order in orders:
        order.get("request", {}).get("payment", {}).pop("token", None)
    cart_id = f"user:{principal.user_id}"
    cart = await actor_call(rt.directory.get("cart", cart_id).get.remote(cart_id))
    sessions = await actor_call(_sessions(rt, principal.user_id).list.remote(principal.user_id))
    return {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": profile,
        "consents": profile["consents"],
        "security": {"mfa_enabled": profile["mfa_enabled"], "unused_recovery_codes": recovery},
        "sessions": sessions,
        "carts": [{"lines": cart["lines"], "subtotal": cart["subtotal"]}],
        "orders": orders,
    }


@router.delete("/v1/me", status_code=204, openapi_extra=SHOPPER)
async def erase_me(principal: User) -> Response:
    """Erase the caller's personal data everywhere (GDPR art. 17 / LGPD art. 18)."""
    rt = await runtime().ready()
    user_id = principal.user_id
    await rt.redis.set(revocation_keys("-", "-", user_id)[2], "erased", ex=_revocation_ttl(rt))
    await actor_call(_sessions(rt, user_id).revoke_all.remote(user_id, "erased"))
    await actor_call(_sessions(rt, user_id).erase.remote(user_id))
    cart_id = f"user:{user_id}"
    await actor_call(rt.directory.get("cart", cart_id).clear.remote(cart_id))
    async with rt.pool.acquire() as conn:
        order_ids = [r["order_id"] for r in await conn.fetch(
            "SELECT order_id FROM orders WHERE user_id = $1", user_id)]  # fmt: skip
    for order_id in order_ids:
        await actor_call(rt.directory.get("order", order_id).erase_personal.remote(order_id))
    async with rt.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE users SET email = 'erased+' || user_id || '@erased.invalid', name = '',"
            " password_hash = '!', mfa_secret = NULL, mfa_pending_secret = NULL,"
            " mfa_last_step = NULL, preferences = '{}'::jsonb, consents = '{}'::jsonb,"
            " erased_at = now(), updated_at = now() WHERE user_id = $1",
            user_id,
        )
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
        await _outbox(conn, USER_ERASED, user_id, {"user_id": user_id})
    return Response(status_code=204)


def log_safe_email(email: str) -> str:
    return mask_email(email)
