"""Secrets at rest on the running system: what PostgreSQL holds is sealed, and the features
that use the secrets (token signing, TOTP enrolment, webhook registration) still work."""

from __future__ import annotations

import uuid

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cluster.crypto import secretbox
from tests.e2e.shoppers import auth, new_admin, new_shopper

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


async def test_signing_keys_are_sealed_and_still_sign(http, db):
    shopper = new_shopper(http)  # a login: the signing key worked
    assert http.get("/v1/me", headers=auth(shopper)).status_code == 200
    rows = await db.fetch("SELECT kid, private_pem FROM signing_keys")
    assert rows
    for row in rows:
        stored = row["private_pem"]
        assert secretbox.is_sealed(stored) and "PRIVATE KEY" not in stored
        pem = secretbox.open_secret(stored, secretbox.SIGNING_KEY, row["kid"])
        load_pem_private_key(pem.encode(), password=None)


async def test_a_totp_secret_never_reaches_the_column_in_plaintext(http, db):
    shopper = new_shopper(http)
    enrol = http.post("/v1/auth/mfa/enroll", headers=auth(shopper))
    assert enrol.status_code in (200, 201), enrol.text
    secret = enrol.json()["secret"]
    stored = await db.fetchval(
        "SELECT mfa_pending_secret FROM users WHERE user_id = $1", shopper["user_id"]
    )
    assert secretbox.is_sealed(stored) and secret not in stored
    assert secretbox.open_secret(stored, secretbox.MFA, shopper["user_id"]) == secret
    # Copied onto another account, the sealed value does not open (bound to its row).
    with pytest.raises(secretbox.TamperedSecret):
        secretbox.open_secret(stored, secretbox.MFA, "someone-else")


async def test_a_webhook_secret_never_reaches_the_column_in_plaintext(http, db):
    admin = new_admin(http)
    secret = "whsec_" + uuid.uuid4().hex
    created = http.post(
        "/v1/admin/webhooks",
        json={"url": "https://hooks.example.com/agora", "events": ["order.confirmed"],
              "secret": secret},
        headers=admin,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    webhook_id = created.json()["id"]
    try:
        stored = await db.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1", webhook_id)
        assert secretbox.is_sealed(stored) and secret not in stored
        assert secretbox.open_secret(stored, secretbox.WEBHOOK_SECRET, webhook_id) == secret
        assert secret not in http.get("/v1/admin/webhooks", headers=admin).text
    finally:
        http.delete(f"/v1/admin/webhooks/{webhook_id}", headers=admin)


async def test_plaintext_rows_from_before_are_sealed_by_reseal_all(db):
    """What ``agora up`` / ``agora migrate`` run: an old plaintext row gets sealed in place."""
    webhook_id = f"wh_{uuid.uuid4().hex}"
    await db.execute(
        "INSERT INTO webhooks (webhook_id, url, events, secret, created_by)"
        " VALUES ($1, 'https://hooks.example.com/x', ARRAY['order.confirmed'], $2, 'test')",
        webhook_id,
        "legacy-plaintext-secret",
    )
    try:
        async with db.acquire() as conn, conn.transaction():
            counts = await secretbox.reseal_all(conn, secretbox.master_keys())
        assert counts["webhooks.secret"] >= 1
        stored = await db.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1", webhook_id)
        assert secretbox.is_sealed(stored)
        assert (
            secretbox.open_secret(stored, secretbox.WEBHOOK_SECRET, webhook_id)
            == "legacy-plaintext-secret"
        )
    finally:
        await db.execute("DELETE FROM webhooks WHERE webhook_id = $1", webhook_id)
