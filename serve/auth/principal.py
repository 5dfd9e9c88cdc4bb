"""Who is calling: access-token verification in-process, revocation checks, roles.

Every route declares the role it needs (``public``, ``shopper`` or ``admin``)
in its OpenAPI operation as ``x-required-role``; the dependencies below
enforce it. Verification needs no hop: keys are cached in the replica, and
one Redis MGET checks the token, its session and its user against the
revocation lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from serve.auth.tokens import Claims
from serve.problems import Problem
from serve.runtime import runtime

PUBLIC = {"x-required-role": "public"}
SHOPPER = {"x-required-role": "shopper"}
ADMIN = {"x-required-role": "admin"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agora"'}


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: tuple[str, ...]
    session_id: str
    jti: str
    exp: int


def revocation_keys(jti: str, sid: str, user_id: str) -> list[str]:
    return [f"revoked:jti:{jti}", f"revoked:sid:{sid}", f"revoked:user:{user_id}"]


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers=_CHALLENGE)


async def verify_bearer(token: str) -> Principal:
    rt = await runtime().keys()
    now = int(time.time())
    result = rt.verifier.verify(token, now)
    if not isinstance(result, Claims) and result.code == "unknown-key":
        rt = await runtime().keys(force=True)
        result = rt.verifier.verify(token, now)
    if not isinstance(result, Claims):
        raise unauthorized("The access token is invalid or expired.")
    if not result.sid:
        raise unauthorized("The access token is invalid or expired.")
    revoked = await rt.redis.mget(revocation_keys(result.jti, result.sid, result.sub))
    if any(revoked):
        raise unauthorized("The access token has been revoked.")
    return Principal(result.sub, tuple(result.roles), result.sid, result.jti, int(result.exp))


async def optional_principal(request: Request) -> Principal | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Use 'Authorization: Bearer <access token>'.")
    principal = await verify_bearer(token.strip())
    request.state.user_id = principal.user_id  # for the access log (serve/logs.py)
    return principal


async def current_user(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    if principal is None:
        raise unauthorized("This route needs an access token.")
    return principal


async def current_admin(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
    if "admin" not in principal.roles:
        raise Problem(403, "forbidden", "This route is for operators.")
    return principal


MaybeUser = Annotated[Principal | None, Depends(optional_principal)]
User = Annotated[Principal, Depends(current_user)]
Admin = Annotated[Principal, Depends(current_admin)]


def role_of(route: Any) -> str | None:
    extra = getattr(route, "openapi_extra", None) or {}
    return extra.get("x-required-role")
