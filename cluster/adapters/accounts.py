"""Accounts in PostgreSQL: the ``users`` and ``recovery_codes`` SQL of sign-up, login, MFA,
profile and GDPR export/erasure.

Every function takes an open connection, so the caller decides the
transaction (and writes the outbox event in the same one). Nothing here
knows HTTP; rows come back as plain dicts.
"""

from __future__ import annotations

import json
from typing import Any

from actors.writebehind import insert_outbox
from cluster.adapters import reviews
from cluster.crypto import secretbox
from streams.events import Envelope

MFA_CONTEXT = secretbox.MFA


async def emit(conn: Any, event: Envelope, tenant: str, namespace: str) -> None:
    """Queue ``event`` in the outbox, in the caller's transaction."""
    await insert_outbox(conn, [event], tenant, namespace)


async def create_user(conn: Any, user_id: str, email: str, name: str, password_hash: str) -> bool:
    """Insert a shopper; False when the email is taken."""
    created = await conn.fetchval(
        "INSERT INTO users (user_id, email, name, password_hash) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (email) DO NOTHING RETURNING user_id",
        user_id,
        email,
        name,
        password_hash,
    )
    return created is not None


async def login_by_email(conn: Any, email: str) -> dict[str, Any] | None:
    """user_id, password_hash, roles and mfa_secret of a live account."""
    row = await conn.fetchrow(
        "SELECT user_id, password_hash, roles, mfa_secret FROM users"
        " WHERE email = $1 AND erased_at IS NULL",
        email,
    )
    return None if row is None else _opened(dict(row), row["user_id"])


async def roles_of(conn: Any, user_id: str) -> list[str] | None:
    """The roles of a live account, or None."""
    row = await conn.fetchrow(
        "SELECT roles FROM users WHERE user_id = $1 AND erased_at IS NULL", user_id
    )
    return None if row is None else list(row["roles"])


async def mfa_state(conn: Any, user_id: str) -> dict[str, Any] | None:
    """user_id, roles, mfa_secret and mfa_last_step of a live account."""
    row = await conn.fetchrow(
        "SELECT user_id, roles, mfa_secret, mfa_last_step FROM users"
        " WHERE user_id = $1 AND erased_at IS NULL",
        user_id,
    )
    return None if row is None else _opened(dict(row), user_id)


async def advance_totp_step(conn: Any, user_id: str, step: int) -> bool:
    """Record ``step`` as the last TOTP step used; False if it is not newer (a replay)."""
    moved = await conn.fetchval(
        "UPDATE users SET mfa_last_step = $2 WHERE user_id = $1"
        " AND (mfa_last_step IS NULL OR mfa_last_step < $2) RETURNING 1",
        user_id,
        step,
    )
    return bool(moved)


async def use_recovery_code(conn: Any, user_id: str, code_hash: str) -> bool:
    """Spend an unused recovery code; False if there is none with this hash."""
    used = await conn.fetchval(
        "UPDATE recovery_codes SET used_at = now()"
        " WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING 1",
        user_id,
        code_hash,
    )
    return bool(used)


async def start_mfa(conn: Any, user_id: str, secret: str) -> str | None:
    """Store a pending TOTP secret; the account's email, or None when MFA is already on."""
    return await conn.fetchval(
        "UPDATE users SET mfa_pending_secret = $2, updated_at = now()"
        " WHERE user_id = $1 AND mfa_secret IS NULL RETURNING email",
        user_id,
        secretbox.seal(secret, MFA_CONTEXT, user_id),
    )


async def pending_mfa(conn: Any, user_id: str) -> dict[str, Any] | None:
    """The pending and current TOTP secrets, row locked for the confirming transaction."""
    row = await conn.fetchrow(
        "SELECT mfa_pending_secret, mfa_secret FROM users WHERE user_id = $1 FOR UPDATE",
        user_id,
    )
    return None if row is None else _opened(dict(row), user_id)


def _opened(row: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The row with its TOTP secrets opened (sealed at rest: cluster/crypto/secretbox.py)."""
    for column in ("mfa_secret", "mfa_pending_secret"):
        if column in row:
            row[column] = secretbox.open_optional(row[column], MFA_CONTEXT, user_id)
    return row


async def confirm_mfa(conn: Any, user_id: str, step: int, code_hashes: list[str]) -> None:
    """Turn the pending secret on and replace the recovery codes."""
    await conn.execute(
        "UPDATE users SET mfa_secret = mfa_pending_secret, mfa_pending_secret = NULL,"
        " mfa_last_step = $2, updated_at = now() WHERE user_id = $1",
        user_id,
        step,
    )
    await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)",
        [(user_id, code_hash) for code_hash in code_hashes],
    )


async def profile(conn: Any, user_id: str) -> dict[str, Any] | None:
    """The profile of a live account (timestamps as RFC 3339), or None."""
    row = await conn.fetchrow(
        "SELECT user_id, email, name, roles, mfa_secret IS NOT NULL AS mfa_enabled,"
        " preferences, consents, created_at, updated_at FROM users"
        " WHERE user_id = $1 AND erased_at IS NULL",
        user_id,
    )
    if row is None:
        return None
    found = dict(row)
    found["roles"] = list(found["roles"])
    for key in ("created_at", "updated_at"):
        found[key] = found[key].isoformat().replace("+00:00", "Z")
    return found


async def update_profile(
    conn: Any,
    user_id: str,
    name: str | None,
    preferences: dict[str, Any] | None,
    consents: dict[str, bool] | None,
) -> None:
    """Change name and merge preferences and consents (None: unchanged)."""
    await conn.execute(
        "UPDATE users SET name = COALESCE($2, name),"
        " preferences = preferences || COALESCE($3::text::jsonb, '{}'::jsonb),"
        " consents = consents || COALESCE($4::text::jsonb, '{}'::jsonb), updated_at = now()"
        " WHERE user_id = $1 AND erased_at IS NULL",
        user_id,
        name,
        json.dumps(preferences) if preferences is not None else None,
        json.dumps(consents) if consents is not None else None,
    )


async def unused_recovery_codes(conn: Any, user_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL", user_id
        )
    )


async def orders_of(conn: Any, user_id: str) -> list[dict[str, Any]]:
    """The user's order documents, oldest first."""
    rows = await conn.fetch(
        "SELECT data FROM orders WHERE user_id = $1 ORDER BY created_at", user_id
    )
    return [row["data"] for row in rows]


async def order_ids_of(conn: Any, user_id: str) -> list[str]:
    rows = await conn.fetch("SELECT order_id FROM orders WHERE user_id = $1", user_id)
    return [row["order_id"] for row in rows]


async def erase_user(conn: Any, user_id: str) -> None:
    """Blank the account's personal data and its recovery codes (the row stays, erased)."""
    await conn.execute(
        "UPDATE users SET email = 'erased+' || user_id || '@erased.invalid', name = '',"
        " password_hash = '!', mfa_secret = NULL, mfa_pending_secret = NULL,"
        " mfa_last_step = NULL, preferences = '{}'::jsonb, consents = '{}'::jsonb,"
        " erased_at = now(), updated_at = now() WHERE user_id = $1",
        user_id,
    )
    await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
    await reviews.anonymise_author(conn, user_id)  # stars and text stay, the author goes
