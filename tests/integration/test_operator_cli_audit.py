"""Roles and keys changed from the command line reach the audit log, with who acted.

A private PostgreSQL (pgserver), no running system. ``agora admin create`` (new admin,
or the role granted to an existing account) and ``agora keys rotate`` queue an
``admin.action`` event in the outbox in the transaction of the change; the audit
consumer's own ``audit_entry`` + ``append`` turn it into a chained record whose actor is
the OS user (``cli:<login>``), and ``verify`` accepts the chain.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from cluster import cli, db, operator_audit
from cluster.crypto import secretbox
from cluster.crypto.secretbox import MasterKeys
from streams.consumers import audit
from streams.events import Envelope, decode

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(private_database: str) -> str:
    return private_database


@pytest.fixture
def master_key(monkeypatch):
    monkeypatch.setattr(secretbox, "_loaded", MasterKeys(bytes(range(32))))


async def _cli_events(conn: asyncpg.Connection) -> list[Envelope]:
    rows = await conn.fetch(
        "SELECT envelope::text AS e, topic FROM outbox WHERE type = 'admin.action' ORDER BY seq"
    )
    assert {r["topic"] for r in rows} <= {"persistent://agora/events/admin"}
    return [decode(r["e"].encode()) for r in rows]


async def test_admin_create_and_key_rotation_are_audited_with_the_cli_actor(dsn, master_key):
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    made = await cli._create_admin(dsn, email, "a long enough passphrase 42", "Ops")
    new_admin = made.removeprefix("created admin ")
    conn = await db.connect(dsn)
    try:
        shopper = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO users (user_id, email, name, password_hash, roles)"
            " VALUES ($1, $2, 'Ana', 'x', ARRAY['shopper'])",
            shopper,
            f"ana-{shopper[:8]}@example.com",
        )
    finally:
        await conn.close()
    assert (await cli._create_admin(dsn, f"ana-{shopper[:8]}@example.com", "", "")).startswith(
        "promoted"
    )
    kid = await cli._rotate_signing_key(dsn)

    conn = await db.connect(dsn)
    try:
        events = await _cli_events(conn)
        actor = operator_audit.cli_actor()
        assert actor.startswith("cli:")
        assert [(e.payload["action"], e.payload["target"]) for e in events] == [
            ("role.grant", new_admin),
            ("role.grant", shopper),
            ("keys.rotate", kid),
        ]
        assert [e.payload["details"].get("created") for e in events[:2]] == [True, False]
        assert {e.payload["actor"] for e in events} == {actor}
        for event in events:  # what the audit consumer does with each
            entry = audit.audit_entry(event)
            assert entry is not None
            async with conn.transaction():
                await audit.append(conn, **entry)
        records = await conn.fetch("SELECT actor, action, target, details::text FROM audit_log")
        assert [(r["actor"], r["action"], r["target"]) for r in records] == [
            (actor, "role.grant", new_admin),
            (actor, "role.grant", shopper),
            (actor, "keys.rotate", kid),
        ]
        assert json.loads(records[0]["details"]) == {"role": "admin", "created": True}
        verdict = await audit.verify(conn)
        assert verdict.ok and verdict.records == 3
    finally:
        await conn.close()


async def test_a_refused_admin_create_records_nothing(dsn, master_key):
    with pytest.raises(SystemExit, match="password refused"):
        await cli._create_admin(dsn, "weak@example.com", "password123", "Weak")
    conn = await db.connect(dsn)
    try:
        assert await _cli_events(conn) == []
    finally:
        await conn.close()
