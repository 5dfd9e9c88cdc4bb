"""PostgreSQL plumbing: pools, versioned migrations (``cluster/migrations/NNNN_name.sql``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg

from streams import tracing

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x4A60_0001


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    tracing.instrument_connection(conn)  # queries become spans of the trace that ran them


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A pool whose connections encode and decode jsonb as Python values."""
    pool = await asyncpg.create_pool(
        dsn=dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn=dsn)
    await _init_connection(conn)
    return conn


def migration_files() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if not match:
            raise ValueError(f"bad migration file name: {path.name}")
        found.append((int(match.group(1)), match.group(2), path))
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction; returns those applied."""
    applied: list[int] = []
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, path in migration_files():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", version
            )
            if done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied
