"""``agora backup create`` on the running system, ``agora backup restore`` into a scratch one.

The backup is taken from the real, running Agora (its write-behind flushed
through the real shards); the restore goes into a second, embedded PostgreSQL
under a scratch ``var/`` that no Ray runs on, so the shared test system keeps
running for the other tests. That is the same code path as restoring the
checkout's own ``var/`` after ``agora down``: restore starts the embedded
PostgreSQL it needs and stops it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from cluster import backup, cli, infra
from cluster.db import connect as pg_connect
from cluster.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cart_id(token: str) -> str:
    # serve/carttoken.py: an anonymous cart's id is derived from its token.
    return "anon:" + hashlib.sha256(token.encode()).hexdigest()[:40]


async def _scratch_row(scratch: Settings, cart_id: str) -> dict | None:
    conn = await pg_connect(infra.start_postgres(scratch))
    try:
        row = await conn.fetchrow("SELECT data FROM carts WHERE cart_id = $1", cart_id)
        return None if row is None else dict(row["data"])
    finally:
        await conn.close()


async def test_backup_then_restore_brings_the_data_back(system, db, base_url, tmp_path: Path):
    settings: Settings = system
    async with db.acquire() as conn:
        # A demo product: other tests create and retire products of their own.
        sku = await conn.fetchval(
            "SELECT sku FROM products WHERE retired_at IS NULL AND sku ~ '^[A-Z]{3}-[0-9]{6}$'"
            " ORDER BY sku LIMIT 1"
        )
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        added = await http.post("/v1/cart/items", json={"sku": sku, "quantity": 3})
        assert added.status_code in (200, 201), added.text
        cart_id = _cart_id(added.headers["x-cart-token"])
    marker = settings.media_root / f"backup-test-{uuid.uuid4().hex}.bin"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"media bytes")
    out = tmp_path / "backups"
    try:
        # The cart lives in a shard's memory until a flush: create() flushes first.
        assert await asyncio.to_thread(cli.backup_create, settings, str(out)) == 0
    finally:
        marker.unlink()
    [made] = sorted(out.glob("agora-backup-*"))
    manifest = backup.verify(made)
    assert manifest["write_behind_flushed"] is True
    assert manifest["schema_version"] == backup.latest_migration()
    assert {backup.DATABASE, backup.MEDIA} <= set(manifest["files"])

    # Gone from the live database after the backup (our own row: no other test reads it).
    async with db.acquire() as conn:
        await conn.execute("DELETE FROM carts WHERE cart_id = $1", cart_id)

    # Agora runs on the live var/: restore refuses it before touching anything.
    with pytest.raises(backup.BackupError, match="agora down"):
        await backup.restore(settings, made, settings.database_url)

    # A scratch checkout: its own var/ and a Ray port nothing listens on (no Agora runs there).
    scratch = Settings(
        var_dir=tmp_path / "var", chain_rpc_url=settings.chain_rpc_url, ray_port=_free_port()
    )
    infra.ensure_dirs(scratch)
    try:
        restored = await backup.restore(scratch, made, None)
        assert restored[0] == "database" and "media" in restored
        assert not backup.embedded_running(scratch, "postgres"), "started by restore, stopped"
        data = await _scratch_row(scratch, cart_id)
        assert data is not None and [line["quantity"] for line in data["lines"]] == [3]
        assert (scratch.media_root / marker.name).read_bytes() == b"media bytes"
        if backup.CHAIN in manifest["files"]:
            state = backup.chain_state_file(scratch).read_bytes()
            assert state == (made / backup.CHAIN).read_bytes()

        # Altered after the restore, restored again (PostgreSQL left running this time).
        scratch_url = infra.start_postgres(scratch)
        conn = await pg_connect(scratch_url)
        try:
            await conn.execute("DELETE FROM carts WHERE cart_id = $1", cart_id)
            await conn.execute("CREATE TABLE made_after_the_backup (x int)")
        finally:
            await conn.close()
        await backup.restore(scratch, made, None)
        assert backup.embedded_running(scratch, "postgres"), "left as it was found"
        assert await _scratch_row(scratch, cart_id) is not None
        conn = await pg_connect(scratch_url)
        try:
            assert await conn.fetchval("SELECT to_regclass('made_after_the_backup')") is None
            await conn.execute("DELETE FROM carts WHERE cart_id = $1", cart_id)
        finally:
            await conn.close()

        # A corrupt copy is refused and the database is not touched.
        corrupt = tmp_path / "corrupt" / made.name
        shutil.copytree(made, corrupt)
        dump = corrupt / backup.DATABASE
        data_bytes = bytearray(dump.read_bytes())
        data_bytes[len(data_bytes) // 2] ^= 0xFF
        dump.write_bytes(bytes(data_bytes))
        with pytest.raises(backup.BackupError, match="sha256"):
            await backup.restore(scratch, corrupt, None)
        (corrupt / backup.DATABASE).write_bytes(bytes(data_bytes[:100]))
        with pytest.raises(backup.BackupError, match="truncated"):
            await backup.restore(scratch, corrupt, None)
        assert await _scratch_row(scratch, cart_id) is None, "the refused restore changed nothing"
        manifest_text = json.loads((corrupt / backup.MANIFEST).read_text())
        assert manifest_text["files"][backup.DATABASE]["sha256"] != backup.sha256_file(dump)
    finally:
        infra.stop_all(scratch)
