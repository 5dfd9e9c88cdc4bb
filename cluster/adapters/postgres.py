"""PostgreSQL adapters of the shard kinds' ``Store`` port: one row per key, versioned upserts.

An older version never overwrites a newer one (``WHERE version < EXCLUDED.version``),
so a replayed or late flush is harmless.
"""

from __future__ import annotations

import json
import time
from typing import Any


class DocumentStore:
    """PostgreSQL adapter: one JSON document per key, versioned upserts."""

    def __init__(self, table: str, key_column: str) -> None:
        self.table = table
        self.key_column = key_column
        self._upsert = f"""
            INSERT INTO {table} ({key_column}, data, version, updated_at)
            SELECT r.k, r.data::jsonb, r.version, now()
            FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(k, data, version)
            ON CONFLICT ({key_column}) DO UPDATE
               SET data = EXCLUDED.data, version = EXCLUDED.version, updated_at = now()
             WHERE {table}.version < EXCLUDED.version
        """
        self._load = f"SELECT data, version FROM {table} WHERE {key_column} = $1"

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        await conn.execute(
            self._upsert,
            [r[0] for r in rows],
            [json.dumps(r[1], separators=(",", ":")) for r in rows],
            [r[2] for r in rows],
        )

    async def load(self, conn: Any, key: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow(self._load, key)
        return None if row is None else (row["data"], row["version"])


class OrderStore:
    """PostgreSQL adapter: the ``orders`` row of each order (document + list columns)."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        await conn.execute(
            """
            INSERT INTO orders (order_id, user_id, status, step, data, version, created_at)
            SELECT r.id, r.user_id, r.status, r.step, r.data::jsonb, r.version,
                   to_timestamp(r.created_ms / 1000.0)
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::bigint[], $7::bigint[])
                 AS r(id, user_id, status, step, data, version, created_ms)
            ON CONFLICT (order_id) DO UPDATE
               SET status = EXCLUDED.status, step = EXCLUDED.step, data = EXCLUDED.data,
                   version = EXCLUDED.version, updated_at = now()
             WHERE orders.version < EXCLUDED.version
            """,
            [r[0] for r in rows],
            [r[1]["user_id"] for r in rows],
            [r[1]["status"] for r in rows],
            [r[1]["step"] for r in rows],
            [json.dumps(r[1], separators=(",", ":")) for r in rows],
            [r[2] for r in rows],
            [r[1]["created_ms"] for r in rows],
        )

    async def load(self, conn: Any, order_id: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow("SELECT data, version FROM orders WHERE order_id = $1", order_id)
        return None if row is None else (row["data"], row["version"])


class InventoryStore:
    """PostgreSQL adapter: the ``inventory`` row of each SKU (columns + reservations)."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        now = int(time.time() * 1000)
        await conn.execute(
            """
            INSERT INTO inventory (sku, on_hand, reserved, data, version, updated_at)
            SELECT r.sku, r.on_hand, r.reserved, r.data::jsonb, r.version, now()
            FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::bigint[])
                 AS r(sku, on_hand, reserved, data, version)
            ON CONFLICT (sku) DO UPDATE
               SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
                   data = EXCLUDED.data, version = EXCLUDED.version, updated_at = now()
             WHERE inventory.version < EXCLUDED.version
            """,
            [r[0] for r in rows],
            [r[1]["on_hand"] for r in rows],
            [_live_reserved(r[1], now) for r in rows],
            [json.dumps(r[1], separators=(",", ":")) for r in rows],
            [r[2] for r in rows],
        )

    async def load(self, conn: Any, sku: str) -> tuple[dict[str, Any], int] | None:
        row = await conn.fetchrow(
            "SELECT i.on_hand, i.data, i.version FROM products p"
            " LEFT JOIN inventory i USING (sku) WHERE p.sku = $1",
            sku,
        )
        if row is None:
            return None
        if row["on_hand"] is None:
            return {"on_hand": 0}, 0
        return {**row["data"], "on_hand": row["on_hand"]}, row["version"]


def _live_reserved(doc: dict[str, Any], now_ms: int) -> int:
    return sum(q for q, expires, _o in doc.get("reservations", {}).values() if expires > now_ms)
