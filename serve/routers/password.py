"""Password reset by email: ``POST /v1/auth/password/forgot`` and ``/v1/auth/password/reset``.

``forgot`` always answers 202, whether or not the address has an account (no
enumeration). For a live account it stores a single-use token (only its
SHA-256 is kept, valid ``password_reset_ttl_s``, default 30 minutes) and queues
the mail in the same transaction (``mail_outbox``; the notifications actor
sends it). At most ``RESET_MAILS_PER_HOUR`` mails per address per hour; more
requests still answer 202 and send nothing. The token never travels on the
event bus.

``reset`` spends the token: the new password must pass the password policy
(422 otherwise, the token is kept), then the password changes, every other
outstanding reset token of the user is spent, ``auth.password_changed`` is
emitted (the shopper gets a "password changed" mail) and every session of the
user ends (refresh families and their access tokens). An unknown, used or
expired token is a 400 problem ``invalid-reset-token``.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import hashlib
import json
import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from pydantic import Field

from actors.session.passwords import check_password, normalise_email
from serve.auth import flows
from serve.auth.principal import PUBLIC
from serve.problems import Problem, actor_call
from serve.ratelimit import Limit
from serve.runtime import runtime
from serve.schemas import Input
from streams.consumers.notifications import build_message, locale_of, queue_mail, render
from streams.events import AUTH_PASSWORD_CHANGED

router = APIRouter(tags=["auth"])

RESET_MAILS_PER_HOUR = 3


class ForgotPassword(Input):
    email: Annotated[str, Field(min_length=1, max_length=254)]


class ResetPassword(Input):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    new_password: Annotated[str, Field(max_length=1024)]


def reset_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@router.post(
    "/v1/auth/password/forgot",
    status_code=202,
    openapi_extra=PUBLIC,
    responses={202: {"description": "accepted; a mail is sent if the account exists"}},
)
async def forgot_password(body: ForgotPassword, request: Request) -> Response:
    """Ask for a password reset mail. Always 202: the answer says nothing about the account."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    email = normalise_email(body.email)
    if email is None:
        return Response(status_code=202)
    async with rt.pool.acquire() as conn:
        user = await conn.fetchrow(
            "SELECT user_id, email, name, preferences::text AS preferences FROM users"
            " WHERE email = $1 AND erased_at IS NULL",
            email,
        )
    if user is None:
        return Response(status_code=202)
    decision = await rt.limiter.hit(Limit("reset-mails", RESET_MAILS_PER_HOUR, 3600), email)
    if not decision.allowed:
        return Response(status_code=202)
    s = rt.settings
    token = secrets.token_urlsafe(32)
    hashed = reset_token_hash(token)
    link = f"{s.public_base_url.rstrip('/')}/reset-password?token={quote(token)}"
    locale = locale_of(_json(user["preferences"]), s.mail_default_locale)
    rendered = render("password_reset", locale, name=user["name"], code=token, link=link)
    dedupe_key = f"password_reset:{hashed}"
    message = build_message(s.mail_from, user["email"], rendered, dedupe_key)
    async with rt.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO password_resets (token_hash, user_id, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))",
            hashed,
            user["user_id"],
            float(s.password_reset_ttl_s),
        )
        await queue_mail(
            conn,
            dedupe_key=dedupe_key,
            kind="password_reset",
            user_id=user["user_id"],
            to=user["email"],
            message=message,
        )
    return Response(status_code=202)


def _json(text: str | None) -> dict:
    value = json.loads(text or "{}")
    return value if isinstance(value, dict) else {}


@router.post(
    "/v1/auth/password/reset",
    status_code=204,
    openapi_extra=PUBLIC,
    responses={
        400: {"description": "unknown, used or expired token"},
        422: {"description": "the new password is refused by the policy"},
    },
)
async def reset_password(body: ResetPassword, request: Request) -> Response:
    """Set a new password with a reset token; every session of the account ends."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    hashed = reset_token_hash(body.token.strip())
    async with rt.pool.acquire() as conn:
        found = await conn.fetchrow(
            "SELECT r.user_id, u.email, u.name FROM password_resets r"
            " JOIN users u ON u.user_id = r.user_id"
            " WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > now()"
            " AND u.erased_at IS NULL",
            hashed,
        )
    if found is None:
        raise _invalid_token()
    reason = check_password(body.new_password, email=found["email"], name=found["name"])
    if reason:
        errors = [{"field": "body.new_password", "message": reason}]
        raise Problem(422, "weak-password", reason, errors=errors)
    password_hash = await flows.hash_password(body.new_password)
    user_id = found["user_id"]
    async with rt.pool.acquire() as conn, conn.transaction():
        spent = await conn.fetchval(
            "UPDATE password_resets SET used_at = now() WHERE token_hash = $1"
            " AND used_at IS NULL AND expires_at > now() RETURNING user_id",
            hashed,
        )
        if spent is None:
            raise _invalid_token()
        await conn.execute(
            "UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
            user_id,
        )
        await conn.execute(
            "UPDATE users SET password_hash = $2, updated_at = now()"
            " WHERE user_id = $1 AND erased_at IS NULL",
            user_id,
            password_hash,
        )
        await flows.emit(
            conn, AUTH_PASSWORD_CHANGED, user_id, {"user_id": user_id, "reason": "reset"}
        )
    ended = await actor_call(flows.sessions(rt).revoke_all(user_id, "password-reset"), "Sessions")
    for session_id in ended:
        await flows.end_session_tokens(rt, session_id, "password-reset")
    return Response(status_code=204)


def _invalid_token() -> Problem:
    return Problem(
        400, "invalid-reset-token", "The reset token is unknown, already used or expired."
    )
