"""The caller's account (API.md, "Auth and account"): profile, changes, and the GDPR/LGPD
rights: export everything held, erase it everywhere.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response

from actors.cart.model import user_cart_id
from actors.clients import OrderClient
from cluster.adapters import accounts
from serve.auth import flows
from serve.auth.principal import SHOPPER, User, revocation_keys
from serve.auth.schemas import ProfilePatch
from serve.problems import actor_call
from serve.runtime import runtime
from streams.events import USER_ERASED, USER_UPDATED

router = APIRouter(tags=["auth"])


async def _profile(conn: Any, user_id: str) -> dict[str, Any]:
    found = await accounts.profile(conn, user_id)
    if found is None:
        raise flows.problem_401("unauthorized", "This account no longer exists.")
    return found


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
        await accounts.update_profile(
            conn,
            principal.user_id,
            body.name.strip() if body.name else None,
            body.preferences,
            body.consents,
        )
        await flows.emit(conn, USER_UPDATED, principal.user_id, {"user_id": principal.user_id})
        return await _profile(conn, principal.user_id)


@router.get("/v1/me/export", openapi_extra=SHOPPER)
async def export_me(principal: User) -> dict[str, Any]:
    """Everything held about the caller (GDPR art. 15 / LGPD art. 18)."""
    rt = await runtime().ready()
    user_id = principal.user_id
    async with rt.pool.acquire() as conn:
        profile = await _profile(conn, user_id)
        recovery = await accounts.unused_recovery_codes(conn, user_id)
        orders = await accounts.orders_of(conn, user_id)
    for order in orders:
        order.get("request", {}).get("payment", {}).pop("token", None)
    cart = await actor_call(rt.carts.get(user_cart_id(user_id)), "The cart service")
    sessions = await actor_call(flows.sessions(rt).active(user_id), "Sessions")
    return {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": profile,
        "consents": profile["consents"],
        "security": {"mfa_enabled": profile["mfa_enabled"], "unused_recovery_codes": recovery},
        "sessions": sessions,
        "carts": [{"lines": [asdict(x) for x in cart.lines], "subtotal": cart.subtotal}],
        "orders": orders,
    }


@router.delete("/v1/me", status_code=204, openapi_extra=SHOPPER)
async def erase_me(principal: User) -> Response:
    """Erase the caller's personal data everywhere (GDPR art. 17 / LGPD art. 18)."""
    rt = await runtime().ready()
    user_id = principal.user_id
    erased_key = revocation_keys("-", "-", user_id)[2]
    await rt.redis.set(erased_key, "erased", ex=flows.revocation_ttl(rt))
    await actor_call(flows.sessions(rt).revoke_all(user_id, "erased"), "Sessions")
    await actor_call(flows.sessions(rt).erase(user_id), "Sessions")
    await actor_call(rt.carts.clear(user_cart_id(user_id)), "The cart service")
    async with rt.pool.acquire() as conn:
        order_ids = await accounts.order_ids_of(conn, user_id)
    orders = OrderClient(rt.directory)
    for order_id in order_ids:
        await actor_call(orders.erase_personal(order_id), "Orders")
    async with rt.pool.acquire() as conn, conn.transaction():
        await accounts.erase_user(conn, user_id)
        await flows.emit(conn, USER_ERASED, user_id, {"user_id": user_id})
    return Response(status_code=204)
