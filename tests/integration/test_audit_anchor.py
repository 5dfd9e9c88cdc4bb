"""The audit chain head is anchored through the ledger, and verify checks against it.

The audit consumer actor (created by ``agora up`` with ``LedgerAuditAnchor``)
records its chain head as an ``audit`` leaf; the ledger actor batches it and
anchors the batch on the local chain (anvil). Removing the newest records
then no longer passes as a shorter valid chain.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from actors.messages import now_ms
from actors.writebehind import insert_outbox
from ledger.audit_anchor import AUDIT_KIND, LedgerAuditAnchor
from streams.consumers import audit
from streams.events import ADMIN_ACTION, make_event
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(db_url: str):
    pool = await asyncpg.create_pool(dsn=db_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_the_chain_head_gets_anchored_and_verify_uses_it(pool: asyncpg.Pool, system):
    actor = f"test-anchor-{uuid.uuid4().hex[:8]}"
    payload = {"actor": actor, "action": "test.anchor", "target": None, "details": {}}
    event = make_event(ADMIN_ACTION, actor, payload, now_ms())
    async with pool.acquire() as conn:
        await insert_outbox(conn, [event], system.events_tenant, system.events_namespace)

    async def recorded() -> bool:
        return await pool.fetchval("SELECT seq FROM audit_log WHERE actor = $1", actor) is not None

    await eventually(recorded, timeout=60, interval=0.2)
    seq = await pool.fetchval("SELECT seq FROM audit_log WHERE actor = $1", actor)
    # The consumer anchors its own head: a leaf keyed by a seq of this chain, at or after
    # ours, whose batch the ledger anchored on chain.
    query = (
        "SELECT l.key::bigint AS seq, l.leaf_data FROM ledger_leaves l"
        " JOIN ledger_batches b USING (batch_id)"
        " WHERE l.kind = $1 AND b.status = 'anchored' AND l.key::bigint >= $2"
        " AND l.key::bigint <= (SELECT max(seq) FROM audit_log)"
        " ORDER BY l.key::bigint DESC LIMIT 1"
    )

    async def anchored() -> bool:
        return await pool.fetchrow(query, AUDIT_KIND, seq) is not None

    await eventually(anchored, timeout=90, interval=0.5)
    row = await pool.fetchrow(query, AUDIT_KIND, seq)
    head = audit.Appended(row["seq"], row["leaf_data"].rsplit("|data=", 1)[1])
    newest = await LedgerAuditAnchor(pool).anchored()
    assert newest is not None and newest.seq >= head.seq
    async with pool.acquire() as conn:
        # The anchored head is the record's hash in the table, and the chain checks out.
        assert await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", head.seq) == (
            head.hash
        )
        verdict = await audit.verify(conn, head)
        assert verdict.ok, verdict.problem
        # A head that is not in the chain (what deleting the newest records looks like).
        beyond = audit.Appended(head.seq + 10**9, head.hash)
        assert not (await audit.verify(conn, beyond)).ok
