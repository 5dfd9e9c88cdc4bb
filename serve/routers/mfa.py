"""TOTP enrolment (API.md, "Auth and account"): start with a new secret, confirm with a code.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import time
from typing import Any

from fastapi import APIRouter, Request

from cluster.adapters import accounts
from serve.auth import flows, totp
from serve.auth.principal import SHOPPER, User
from serve.auth.schemas import MfaConfirm
from serve.problems import Problem
from serve.runtime import runtime
from streams.events import AUTH_MFA_ENABLED

router = APIRouter(tags=["auth"])


@router.post("/v1/auth/mfa/enroll", openapi_extra=SHOPPER)
async def mfa_enroll(principal: User, request: Request) -> dict[str, str]:
    """Start TOTP enrolment: a new secret, its otpauth URI and a QR code (SVG)."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    secret = totp.new_secret()
    async with rt.pool.acquire() as conn:
        email = await accounts.start_mfa(conn, principal.user_id, secret)
    if email is None:
        raise Problem(409, "mfa-already-enabled", "MFA is already on for this account.")
    uri = totp.provisioning_uri(secret, email)
    return {"secret": secret, "otpauth_uri": uri, "qr_svg": totp.qr_svg(uri)}


@router.post("/v1/auth/mfa/confirm", openapi_extra=SHOPPER)
async def mfa_confirm(body: MfaConfirm, principal: User, request: Request) -> dict[str, Any]:
    """Turn MFA on with the first code; answers the one-time recovery codes (shown once)."""
    rt = await runtime().ready()
    await flows.limit_ip(rt, request)
    async with rt.pool.acquire() as conn, conn.transaction():
        row = await accounts.pending_mfa(conn, principal.user_id)
        if row is None or row["mfa_secret"] or not row["mfa_pending_secret"]:
            raise Problem(409, "mfa-not-pending", "Start with POST /v1/auth/mfa/enroll.")
        step = totp.verify_code(row["mfa_pending_secret"], body.code, int(time.time()), None)
        if step is None:
            raise Problem(422, "invalid-code", "The code is wrong; check the device clock.")
        codes = totp.new_recovery_codes()
        hashes = [totp.hash_recovery_code(c) for c in codes]
        await accounts.confirm_mfa(conn, principal.user_id, step, hashes)
        await flows.emit(conn, AUTH_MFA_ENABLED, principal.user_id, {"user_id": principal.user_id})
    return {"mfa_enabled": True, "recovery_codes": codes}
