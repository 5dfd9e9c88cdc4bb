"""The signing key ring in PostgreSQL: create, rotate, and load for signing and JWKS.

The newest key signs; every key not retired for longer than an access-token
lifetime (plus leeway) still verifies, so a rotation never logs anyone out.
Private keys live in the ``signing_keys`` table sealed under the master key
(cluster/crypto/secretbox.py; production: a KMS, see docs/DECISIONS.md) and
never leave the server; JWKS publishes public parts.
"""

from __future__ import annotations

import time
from typing import Any

from actors.session.keyring import SigningKey, generate_key, key_from_row, key_to_row
from cluster.crypto import secretbox

CONTEXT = secretbox.SIGNING_KEY


async def ensure_key(conn: Any) -> None:
    """Create the first signing key if there is none."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(4871)")
        if not await conn.fetchval("SELECT 1 FROM signing_keys LIMIT 1"):
            await _insert(conn, generate_key(int(time.time())))


async def rotate(conn: Any) -> str:
    """Add a new signing key and retire the others (they keep verifying for a while)."""
    key = generate_key(int(time.time()))
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(4871)")
        await conn.execute("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
        await _insert(conn, key)
    return key.kid


async def _insert(conn: Any, key: SigningKey) -> None:
    kid, pem, jwk_json, _created = key_to_row(key)
    assert pem is not None
    await conn.execute(
        "INSERT INTO signing_keys (kid, private_pem, public_jwk) VALUES ($1, $2, $3::text::jsonb)",
        kid,
        secretbox.seal(pem.decode(), CONTEXT, kid),
        jwk_json,
    )


async def load(conn: Any, verify_window_s: int) -> tuple[SigningKey, list[SigningKey]]:
    """(the signing key, every key that still verifies)."""
    rows = await conn.fetch(
        "SELECT kid, private_pem, public_jwk::text AS jwk, created_at, retired_at"
        " FROM signing_keys"
        " WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)"
        " ORDER BY created_at DESC",
        float(verify_window_s),
    )
    if not rows:
        raise LookupError("no signing key: run `agora up`")
    keys = [
        key_from_row(
            r["kid"],
            secretbox.open_secret(r["private_pem"], CONTEXT, r["kid"]).encode(),
            r["jwk"],
            int(r["created_at"].timestamp()),
        )
        for r in rows
    ]
    return keys[0], keys
