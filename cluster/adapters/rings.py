"""PostgreSQL adapter of the durable shard rings (``shard_rings``): load, begin, settle.

A rescale writes its ring with a conditional update on the epoch it started
from, so two concurrent ``agora scale`` runs cannot both win.
"""

from __future__ import annotations

from typing import Any

from actors.directory import RingSpec


class RingConflict(RuntimeError):
    """Another rescale of the kind changed its ring first."""


class PostgresRings:
    """The ``RingStore`` port over the ``shard_rings`` table."""

    async def load(self, conn: Any, kind: str) -> RingSpec | None:
        row = await conn.fetchrow(
            "SELECT epoch, shards, previous FROM shard_rings WHERE kind = $1", kind
        )
        return None if row is None else RingSpec(kind, row["epoch"], row["shards"], row["previous"])

    async def load_all(self, conn: Any) -> dict[str, RingSpec]:
        rows = await conn.fetch("SELECT kind, epoch, shards, previous FROM shard_rings")
        return {
            r["kind"]: RingSpec(r["kind"], r["epoch"], r["shards"], r["previous"]) for r in rows
        }

    async def begin(self, conn: Any, spec: RingSpec) -> None:
        """Store ``spec`` (epoch N+1, handing off) if the stored epoch is still N."""
        done = await conn.fetchval(
            "INSERT INTO shard_rings (kind, epoch, shards, previous) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (kind) DO UPDATE SET epoch = EXCLUDED.epoch,"
            " shards = EXCLUDED.shards, previous = EXCLUDED.previous, updated_at = now()"
            " WHERE shard_rings.epoch = EXCLUDED.epoch - 1 RETURNING epoch",
            spec.kind,
            spec.epoch,
            spec.shards,
            spec.previous,
        )
        if done is None:
            raise RingConflict(f"the {spec.kind} ring changed meanwhile (another agora scale?)")

    async def settle(self, conn: Any, spec: RingSpec) -> None:
        """The handoff of ``spec`` has ended: clear ``previous``."""
        await conn.execute(
            "UPDATE shard_rings SET previous = NULL, updated_at = now()"
            " WHERE kind = $1 AND epoch = $2",
            spec.kind,
            spec.epoch,
        )
