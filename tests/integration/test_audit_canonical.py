"""The audit chain on a real PostgreSQL: one canonical text for writer, verifier and SQL.

A private PostgreSQL (pgserver), no running system. ``append`` writes records with
awkward text; the SQL ``audit_canonical`` (which wrote the first chains) renders
the same bytes as ``canonical``; ``verify`` in one process and in forked workers
names the same tampered record, inside a span and at a span's first record.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pgserver
import pytest

from cluster import db
from streams.consumers import audit

pytestmark = pytest.mark.integration

AWKWARD = [
    ("admin-1", "inventory.set", "SKU-1", {"on_hand": 3, "reason": "restock"}),
    (None, "auth.login_failed", None, {"reason": 'bad "pw"\\', "n": 1.50, "big": 10**20}),
    ("é 中 😀", "coupon.create", "X\t10\n", {"z": [True, None, -0.0], "": {"\u0001": "\x7f"}}),
    ("", "order.refund", "", {}),
]
# verify_parallel cuts 1..N into 8 spans for 2 workers: N = 64 makes spans of 8.
RECORDS = 64


@pytest.fixture
async def dsn(tmp_path: Path) -> AsyncIterator[str]:
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    uri = server.get_uri()
    conn = await db.connect(uri)
    try:
        await db.migrate(conn)
        zone = timezone(timedelta(hours=-3))
        for seq in range(1, RECORDS + 1):
            actor, action, target, details = AWKWARD[seq % len(AWKWARD)]
            async with conn.transaction():
                await audit.append(
                    conn,
                    event_id=str(uuid.uuid4()),
                    at=datetime(2026, 1, 1, tzinfo=zone) + timedelta(microseconds=seq * 7_001),
                    actor=actor,
                    action=action,
                    target=target,
                    details={**details, "seq": seq},
                )
    finally:
        await conn.close()
    yield uri
    server.cleanup()


async def _both(conn: asyncpg.Connection, dsn: str) -> audit.Verdict:
    """The sequential and the parallel verdict, which must be the same."""
    sequential = await audit.verify(conn, batch=5)
    # The walk decodes times as ints on this connection, then gives it back as it was.
    assert isinstance(await conn.fetchval("SELECT now()"), datetime)
    parallel = await audit.verify(conn, batch=5, dsn=dsn, workers=2)
    assert parallel == sequential
    return sequential


async def test_writer_sql_and_verifier_render_the_same_text(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT seq, event_id::text, at, actor, action, target, details::text, prev_hash,"
            " hash, audit_canonical(seq, event_id, at, actor, action, target, details) AS sql"
            " FROM audit_log ORDER BY seq"
        )
        assert len(rows) == RECORDS
        for row in rows:
            assert audit.canonical(*row[:7]) == row["sql"]
            assert audit.record_hash(row["prev_hash"], row["sql"]) == row["hash"]
        verdict = await _both(conn, dsn)
        assert verdict == audit.Verdict(True, RECORDS, audit.Appended(RECORDS, rows[-1]["hash"]))
        anchored = audit.Appended(20, rows[19]["hash"])
        assert (await audit.verify(conn, anchored, batch=5, dsn=dsn, workers=2)).ok
        wrong = await audit.verify(conn, audit.Appended(20, "f" * 64), batch=5, dsn=dsn, workers=2)
        assert wrong.bad_seq == 20 and "anchored" in (wrong.problem or "")
        beyond = audit.Appended(RECORDS + 5, rows[-1]["hash"])
        gone = await audit.verify(conn, beyond, batch=5, dsn=dsn, workers=2)
        assert gone.bad_seq == RECORDS + 1 and "removed" in (gone.problem or "")
    finally:
        await conn.close()


# 12: inside the second span (9..16); 17: the first record of the third span.
@pytest.mark.parametrize("seq", [12, 17])
async def test_tampering_is_named_sequential_or_parallel(dsn: str, seq: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # The trigger refuses UPDATE and DELETE; a superuser can bypass it.
        await conn.execute("SET session_replication_role = replica")
        original = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = $1", seq)
        await conn.execute(
            "UPDATE audit_log SET details = details || '{\"x\": 1}' WHERE seq = $1", seq
        )
        edited = await _both(conn, dsn)
        assert (edited.bad_seq, edited.problem) == (seq, f"record {seq} was altered")
        assert edited.records == seq - 1 and edited.head is not None
        assert edited.head.seq == seq - 1

        await conn.execute("DELETE FROM audit_log WHERE seq = $1", seq)
        deleted = await _both(conn, dsn)
        assert deleted.bad_seq == seq
        assert deleted.problem == f"record {seq} is missing (next is {seq + 1})"

        columns = list(original.keys())
        await conn.execute(
            f"INSERT INTO audit_log ({', '.join(columns)})"
            f" VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
            *original.values(),
        )
        restored = await _both(conn, dsn)
        assert restored.ok and restored.records == RECORDS
    finally:
        await conn.close()


async def test_an_empty_log_verifies_both_ways(tmp_path: Path) -> None:
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    conn = await db.connect(server.get_uri())
    try:
        await db.migrate(conn)
        assert await _both(conn, server.get_uri()) == audit.Verdict(True, 0, None)
    finally:
        await conn.close()
        server.cleanup()


def test_canonical_time_matches_to_char_for_any_zone() -> None:
    when = datetime(2026, 7, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert audit.canonical_at(when) == "2026-06-30T22:30:00.000000Z"
    assert audit.canonical_at(when.astimezone(UTC)) == "2026-06-30T22:30:00.000000Z"


@pytest.mark.parametrize("when", ["10000-01-01 00:00:00+00", "0001-01-01 00:00:00+00 BC"])
async def test_a_time_out_of_pythons_range_is_named(dsn: str, when: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_log SET at = $1::text::timestamptz WHERE seq = 20", when)
        verdict = await _both(conn, dsn)
        assert (verdict.bad_seq, verdict.problem) == (20, "record 20 was altered")
    finally:
        await conn.close()


async def test_appends_batched_in_one_transaction_chain_like_single_ones(dsn: str) -> None:
    """The audit consumer applies a batch of events in one transaction (``batch_max``):
    each append must link to the one before it in that transaction, and a redelivered
    event inside the batch must be skipped, not chained twice."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [str(uuid.uuid4()) for _ in range(5)]
        at = datetime(2026, 2, 1, tzinfo=UTC)
        async with conn.transaction():
            written = [
                await audit.append(
                    conn,
                    event_id=event_id,
                    at=at,
                    actor="admin-2",
                    action="price.set",
                    target=f"SKU-{i}",
                    details={"i": i},
                )
                for i, event_id in enumerate([*ids, ids[2]])
            ]
        assert written[-1] is None  # the redelivery inside the batch
        seqs = [w.seq for w in written if w is not None]
        assert seqs == list(range(RECORDS + 1, RECORDS + 6))
        rows = await conn.fetch(
            "SELECT prev_hash, hash FROM audit_log WHERE seq >= $1 ORDER BY seq", RECORDS
        )
        assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
        verdict = await audit.verify(conn)
        assert verdict.ok and verdict.records == RECORDS + 5
    finally:
        await conn.close()
