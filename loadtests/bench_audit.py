"""``agora audit verify`` over N generated audit records, against a plain scan of the same rows.

Runs on a private, temporary PostgreSQL (pgserver), never on the system's.
The records are made with the real ``record_hash`` (one chain, actors and
actions cycling, small JSON details) and loaded with COPY. Printed: the time
of ``audit.verify`` and of the baseline (the same server-side cursor scan of the
stored columns, no canonical text, no hashing), and their ratio, for ``verify``
in this process and with ``--workers`` processes (default: one per core), for
the one-process walk with times decoded as datetimes (before they came as ints),
and for the verify it replaced (PostgreSQL rendering the canonical text).

    .venv/bin/python -m loadtests.bench_audit --records 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from cluster import db
from streams.consumers import audit


def _fields(n: int):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, n + 1):
        yield (
            seq,
            uuid.UUID(int=seq),
            start + timedelta(milliseconds=seq * 37),
            f"admin-{seq % 17}",
            ("inventory.set", "coupon.create", "auth.logged_in")[seq % 3],
            f"SKU-{seq % 5000}",
            json.dumps({"on_hand": seq % 1000, "reason": "restock"}),
        )


FIELDS = ["seq", "event_id", "at", "actor", "action", "target", "details"]


async def _load(conn: asyncpg.Connection, n: int) -> None:
    """Fields into a staging table, canonical texts back from PostgreSQL, the chain to COPY."""
    await conn.execute(
        "CREATE TEMP TABLE audit_stage AS"
        " SELECT seq, event_id, at, actor, action, target, details FROM audit_log WITH NO DATA"
    )
    await conn.copy_records_to_table("audit_stage", records=list(_fields(n)), columns=FIELDS)
    rows = await conn.fetch(
        "SELECT seq, event_id, at, actor, action, target, details,"
        " audit_canonical(seq, event_id, at, actor, action, target, details) AS canon"
        " FROM audit_stage ORDER BY seq"
    )
    prev, chained = audit.GENESIS, []
    for row in rows:
        digest = audit.record_hash(prev, row["canon"])
        chained.append((*[row[k] for k in FIELDS], prev, digest))
        prev = digest
    await conn.execute("SET session_replication_role = replica")
    await conn.copy_records_to_table(
        "audit_log", records=chained, columns=[*FIELDS, "prev_hash", "hash"]
    )
    await conn.execute("SET session_replication_role = origin")


async def _baseline(conn: asyncpg.Connection) -> int:
    """The same snapshot and cursor over the same rows, selecting the stored columns only."""
    count = 0
    query = "SELECT seq, prev_hash, hash, details::text FROM audit_log ORDER BY seq"
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for _row in conn.cursor(query, prefetch=20_000):
            count += 1
    return count


async def _datetime_walk(conn: asyncpg.Connection) -> audit.Verdict:
    """The one-process verify as it was before times came as ints: asyncpg builds a
    datetime per row and ``canonical_at`` renders it."""
    walker = audit.ChainWalker()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(audit._RECORDS)
        while rows := await cursor.fetch(50_000):
            failed = walker.feed(rows)
            if failed is not None:
                return failed
    return walker.finish()


async def _sql_canonical(conn: asyncpg.Connection) -> audit.Verdict:
    """The verify this replaced: PostgreSQL renders ``audit_canonical``, rows one by one."""
    walker = audit.ChainWalker()
    query = (
        "SELECT seq, prev_hash, hash,"
        " audit_canonical(seq, event_id, at, actor, action, target, details) AS canon"
        " FROM audit_log ORDER BY seq"
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(query, prefetch=20_000):
            failed = walker.step(row)
            if failed is not None:
                return failed
    return walker.finish()


async def measure(dsn: str, n: int, workers: int) -> None:
    conn = await asyncpg.connect(dsn)  # no text jsonb codec: COPY needs the binary one
    try:
        await db.migrate(conn)
        started = time.perf_counter()
        await _load(conn, n)
        await conn.execute("VACUUM ANALYZE audit_log")
        print(f"generated and loaded {n:,} records in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        scanned = await _baseline(conn)
        baseline = time.perf_counter() - started
        print(f"baseline scan (cursor over the stored columns): {baseline:.2f}s")
        for procs in (1, *([workers] if workers > 1 else [])):
            started = time.perf_counter()
            verdict = await audit.verify(conn, dsn=dsn, workers=procs)
            took = time.perf_counter() - started
            assert verdict.ok and verdict.records == scanned == n, verdict
            print(
                f"audit verify, {procs} process(es): {took:.2f}s ({took / baseline:.2f}x"
                f" baseline), {n / took:,.0f} records/s"
            )
        started = time.perf_counter()
        verdict = await _datetime_walk(conn)
        took = time.perf_counter() - started
        assert verdict.ok and verdict.records == n, verdict
        print(
            f"verify, 1 process, times decoded as datetimes (before): {took:.2f}s"
            f" ({took / baseline:.2f}x baseline)"
        )
        started = time.perf_counter()
        verdict = await _sql_canonical(conn)
        took = time.perf_counter() - started
        assert verdict.ok and verdict.records == n, verdict
        print(
            f"previous verify (SQL canonical text, row by row): {took:.2f}s"
            f" ({took / baseline:.2f}x baseline)"
        )
        print("target: 1,000,000 records in < 10 s")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for the parallel run"
    )
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="agora-bench-audit-"))
    try:
        import pgserver

        server = pgserver.get_server(state / "pg", cleanup_mode="stop")
        asyncio.run(measure(server.get_uri(), args.records, args.workers))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
