"""The ledger side of the audit log's ``AnchorPort`` (streams.consumers.audit).

``anchor(head)`` records the audit chain head as a leaf
``agora.audit.v1|key=<seq>|data=<hash>`` (once per seq) in ``ledger_leaves``; the
ledger actor batches and anchors it like an order's leaf. ``anchored()`` is the
newest head whose batch is anchored on chain, for ``audit.verify(expected=...)``.
It works on the database the ledger actor reads, so it needs no Ray call and an
anchor request survives any crash once ``anchor`` returns.
"""

from __future__ import annotations

import asyncpg

from ledger import store
from ledger.merkle import leaf_data_for
from streams.consumers.audit import Appended

AUDIT_KIND = "audit"


class LedgerAuditAnchor:
    """Implements ``streams.consumers.audit.AnchorPort`` on the ledger's tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def anchor(self, head: Appended) -> None:
        async with self._pool.acquire() as conn:
            await store.record_leaf(
                conn, AUDIT_KIND, str(head.seq), leaf_data_for(AUDIT_KIND, str(head.seq), head.hash)
            )

    async def anchored(self) -> Appended | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT l.key, l.leaf_data FROM ledger_leaves l"
                " JOIN ledger_batches b USING (batch_id)"
                " WHERE l.kind = $1 AND b.status = 'anchored'"
                " ORDER BY l.key::bigint DESC LIMIT 1",
                AUDIT_KIND,
            )
        if row is None:
            return None
        return Appended(int(row["key"]), row["leaf_data"].rsplit("|data=", 1)[1])
