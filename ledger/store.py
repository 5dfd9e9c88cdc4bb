"""The ledger's tables (cluster/migrations/0008_ledger.sql): leaves, batches, contracts, proofs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from ledger.merkle import MerkleTree, leaf_hash, to_hex

ZERO_ROOT = b"\x00" * 32
ORDER_KIND = "order"  # the kind of an order's leaf (key: the order id)

_RECORD = """
INSERT INTO ledger_leaves (kind, key, leaf_data, leaf) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, key) DO NOTHING
RETURNING leaf_id
"""
_WAITING = """
SELECT count(*) AS waiting, extract(epoch FROM now() - min(recorded_at)) AS oldest_age_s
FROM ledger_leaves WHERE batch_id IS NULL
"""
_UNANCHORED = "SELECT count(*) FROM ledger_batches WHERE status <> 'anchored'"
_TAKE = """
SELECT leaf_id, leaf FROM ledger_leaves WHERE batch_id IS NULL
ORDER BY leaf_id LIMIT $1 FOR UPDATE
"""
_ASSIGN = """
UPDATE ledger_leaves AS l SET batch_id = $1, position = u.position, path = u.path
FROM unnest($2::bigint[], $3::int[], $4::bytea[]) AS u(leaf_id, position, path)
WHERE l.leaf_id = u.leaf_id
"""
_BATCH_COLUMNS = (
    "batch_id, status, root, leaf_count, chain_id, contract, nonce, tx_hash, raw_tx,"
    " block_number, gas_used, attempts"
)


@dataclass(frozen=True)
class Batch:
    batch_id: int
    status: str
    root: bytes
    leaf_count: int
    chain_id: int | None
    contract: str | None
    nonce: int | None
    tx_hash: bytes | None
    raw_tx: bytes | None
    block_number: int | None
    gas_used: int | None
    attempts: int


def _batch(row: asyncpg.Record) -> Batch:
    values: dict[str, Any] = {
        k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()
    }
    return Batch(**values)


async def record_leaf(conn: asyncpg.Connection, kind: str, key: str, leaf_data: str) -> bool:
    """Record a leaf once per (kind, key); True when it is new."""
    return await conn.fetchval(_RECORD, kind, key, leaf_data, leaf_hash(leaf_data)) is not None


async def close_batch(conn: asyncpg.Connection, max_leaves: int) -> Batch | None:
    """Put up to ``max_leaves`` waiting leaves (oldest first) into a new closed batch."""
    async with conn.transaction():
        rows = await conn.fetch(_TAKE, max_leaves)
        if not rows:
            return None
        tree = MerkleTree.build([bytes(r["leaf"]) for r in rows])
        batch_id = await conn.fetchval("SELECT nextval('ledger_batch_ids')")
        await conn.execute(
            "INSERT INTO ledger_batches (batch_id, status, root, leaf_count)"
            " VALUES ($1, 'closed', $2, $3)",
            batch_id,
            tree.root,
            len(rows),
        )
        await conn.execute(
            _ASSIGN,
            batch_id,
            [r["leaf_id"] for r in rows],
            list(range(len(rows))),
            [b"".join(p) for p in tree.proofs()],
        )
        row = await conn.fetchrow(
            f"SELECT {_BATCH_COLUMNS} FROM ledger_batches WHERE batch_id = $1", batch_id
        )
        return _batch(row)


async def waiting(conn: asyncpg.Connection) -> tuple[int, float | None, int]:
    """(leaves not in a batch, age of the oldest in s, batches not yet anchored)."""
    row = await conn.fetchrow(_WAITING)
    age = row["oldest_age_s"]
    return (
        int(row["waiting"]),
        (float(age) if age is not None else None),
        int(await conn.fetchval(_UNANCHORED)),
    )


async def oldest_unanchored(conn: asyncpg.Connection) -> Batch | None:
    row = await conn.fetchrow(
        f"SELECT {_BATCH_COLUMNS} FROM ledger_batches WHERE status <> 'anchored'"
        " ORDER BY batch_id LIMIT 1"
    )
    return _batch(row) if row else None


async def mark_sending(
    conn: asyncpg.Connection,
    batch_id: int,
    chain_id: int,
    contract: str,
    nonce: int,
    tx_hash: bytes,
    raw_tx: bytes,
) -> None:
    """Recorded (and committed) BEFORE the transaction is sent."""
    await conn.execute(
        "UPDATE ledger_batches SET status = 'sending', chain_id = $2, contract = $3,"
        " nonce = $4, tx_hash = $5, raw_tx = $6, sent_at = now(), attempts = attempts + 1,"
        " last_error = NULL WHERE batch_id = $1",
        batch_id,
        chain_id,
        contract,
        nonce,
        tx_hash,
        raw_tx,
    )


async def mark_anchored(
    conn: asyncpg.Connection,
    batch_id: int,
    tx_hash: bytes,
    block_number: int,
    block_hash: bytes,
    gas_used: int,
) -> None:
    await conn.execute(
        "UPDATE ledger_batches SET status = 'anchored', tx_hash = $2, block_number = $3,"
        " block_hash = $4, gas_used = $5, anchored_at = now(), last_error = NULL"
        " WHERE batch_id = $1",
        batch_id,
        tx_hash,
        block_number,
        block_hash,
        gas_used,
    )


async def mark_closed(conn: asyncpg.Connection, batch_id: int, reason: str) -> None:
    """Back to 'closed': the recorded transaction can never be mined; a new one is built."""
    await conn.execute(
        "UPDATE ledger_batches SET status = 'closed', nonce = NULL, tx_hash = NULL,"
        " raw_tx = NULL, last_error = $2 WHERE batch_id = $1",
        batch_id,
        reason[:500],
    )


async def note_error(conn: asyncpg.Connection, batch_id: int, reason: str) -> None:
    await conn.execute(
        "UPDATE ledger_batches SET last_error = $2 WHERE batch_id = $1", batch_id, reason[:500]
    )


async def contract_for(conn: asyncpg.Connection, chain_id: int) -> str | None:
    address: str | None = await conn.fetchval(
        "SELECT address FROM ledger_contracts WHERE chain_id = $1", chain_id
    )
    return address


async def remember_contract(
    conn: asyncpg.Connection, chain_id: int, address: str, deploy_tx: bytes
) -> int:
    """Remember a (re)deployed contract; batches sent on this chain before anchor again.

    Called only when the remembered address has no code (a fresh chain: its anchors
    are gone; a redeploy by the same account may even land on the same address).
    Returns how many batches go back to 'closed'.
    """
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO ledger_contracts (chain_id, address, deploy_tx) VALUES ($1, $2, $3)"
            " ON CONFLICT (chain_id) DO UPDATE SET address = excluded.address,"
            " deploy_tx = excluded.deploy_tx, deployed_at = now()",
            chain_id,
            address,
            deploy_tx,
        )
        status = await conn.execute(
            "UPDATE ledger_batches SET status = 'closed', contract = NULL, nonce = NULL,"
            " tx_hash = NULL, raw_tx = NULL, block_number = NULL, block_hash = NULL,"
            " gas_used = NULL, anchored_at = NULL,"
            " last_error = 'contract redeployed: anchoring again'"
            " WHERE chain_id = $1",
            chain_id,
        )
        return int(status.split()[-1])


async def proof_for(conn: asyncpg.Connection, kind: str, key: str) -> dict[str, Any] | None:
    """The proof of leaf (kind, key): None if unknown; ``anchored`` False while pending."""
    row = await conn.fetchrow(
        "SELECT l.leaf_data, l.leaf, l.path, b.batch_id, b.status, b.root, b.chain_id,"
        " b.contract, b.tx_hash, b.block_number"
        " FROM ledger_leaves l LEFT JOIN ledger_batches b USING (batch_id)"
        " WHERE l.kind = $1 AND l.key = $2",
        kind,
        key,
    )
    if row is None:
        return None
    if row["status"] != "anchored":
        return {"anchored": False, "batch_id": row["batch_id"]}
    path = bytes(row["path"] or b"")
    return {
        "anchored": True,
        "leaf_data": row["leaf_data"],
        "leaf": to_hex(bytes(row["leaf"])),
        "path": [to_hex(path[i : i + 32]) for i in range(0, len(path), 32)],
        "root": to_hex(bytes(row["root"])),
        "batch_id": int(row["batch_id"]),
        "chain_id": int(row["chain_id"]),
        "contract": row["contract"],
        "tx_hash": to_hex(bytes(row["tx_hash"])),
        "block_number": int(row["block_number"]),
    }


async def stats(conn: asyncpg.Connection) -> dict[str, Any]:
    """Backlog (leaves not yet anchored), lag of the oldest of them, last batch's gas and lag."""
    backlog = await conn.fetchrow(
        "SELECT count(*) AS leaves, extract(epoch FROM now() - min(l.recorded_at)) AS age_s"
        " FROM ledger_leaves l LEFT JOIN ledger_batches b USING (batch_id)"
        " WHERE l.batch_id IS NULL OR b.status <> 'anchored'"
    )
    last = await conn.fetchrow(
        "SELECT b.batch_id, b.leaf_count, b.gas_used,"
        " extract(epoch FROM b.anchored_at - (SELECT min(recorded_at) FROM ledger_leaves"
        "   WHERE batch_id = b.batch_id)) AS lag_s"
        " FROM ledger_batches b WHERE status = 'anchored' ORDER BY batch_id DESC LIMIT 1"
    )
    return {
        "backlog_leaves": int(backlog["leaves"]),
        "oldest_unanchored_age_s": float(backlog["age_s"] or 0.0),
        "last_batch_id": last["batch_id"] if last else None,
        "last_batch_leaves": last["leaf_count"] if last else None,
        "last_batch_gas": last["gas_used"] if last else None,
        "last_batch_lag_s": float(last["lag_s"]) if last and last["lag_s"] is not None else None,
    }
