"""Gauges for the on-call alerts (cluster/observability/alerts.yml), refreshed on each scrape.

* ``agora_dependency_up{dependency}``: 1 when the check ``/readyz`` runs passes.
* ``agora_outbox_unsent_events`` and ``agora_outbox_oldest_unsent_seconds``: the
  relay's backlog (events committed and not yet published), i.e. the lag every
  consumer sees before it can even start.
* ``agora_events_dead_lettered{consumer}``: events each consumer has parked on its
  dead-letter topic (undecodable, unknown version, refused), from ``dead_letters``;
  a counter in all but type (it only grows), so ``increase()`` applies.
* ``agora_disk_used_ratio{path}``: the data directory's file system (var/, where
  the embedded PostgreSQL, Redis and Pulsar keep their data).

Each part is bounded by short timeouts so a scrape answers while a dependency is down.
"""

import asyncio
import shutil
from typing import Any

from prometheus_client import Gauge

DEPENDENCY_UP = Gauge(
    "agora_dependency_up", "1 if the dependency answers the readiness check", ["dependency"]
)
OUTBOX_UNSENT = Gauge("agora_outbox_unsent_events", "outbox events not yet published")
OUTBOX_OLDEST = Gauge(
    "agora_outbox_oldest_unsent_seconds", "age of the oldest unpublished outbox event"
)
DEAD_LETTERED = Gauge(
    "agora_events_dead_lettered",
    "events a consumer published to its dead-letter topic, since the database was created",
    ["consumer"],
)
DISK_USED = Gauge("agora_disk_used_ratio", "used / size of the data file system", ["path"])

_OUTBOX = (
    "SELECT count(*) AS unsent,"
    " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest"
    " FROM outbox WHERE sent_at IS NULL"
)

_DEAD_LETTERS = "SELECT consumer, count(*) AS n FROM dead_letters GROUP BY consumer"


async def refresh_dead_letters(conn: Any) -> None:
    """``agora_events_dead_lettered{consumer}`` from the ``dead_letters`` table."""
    for row in await conn.fetch(_DEAD_LETTERS, timeout=2.0):
        DEAD_LETTERED.labels(row["consumer"]).set(row["n"])


async def refresh(rt: Any) -> None:
    """Set every gauge above from the replica's runtime ``rt`` (already ``ready()``)."""
    for name, check in (
        ("database", rt.check_database),
        ("redis", rt.check_redis),
        ("broker", rt.check_broker),
        ("cart_shards", rt.check_shards),
    ):
        try:
            await asyncio.wait_for(check(), 2.0)
            DEPENDENCY_UP.labels(name).set(1)
        except Exception:
            DEPENDENCY_UP.labels(name).set(0)
    try:
        async with rt.pool.acquire(timeout=1.0) as conn:
            row = await conn.fetchrow(_OUTBOX, timeout=2.0)
            OUTBOX_UNSENT.set(row["unsent"])
            OUTBOX_OLDEST.set(row["oldest"])
            await refresh_dead_letters(conn)
    except Exception:  # noqa: S110 - the database alert covers an unreachable database
        pass
    try:
        usage = shutil.disk_usage(rt.settings.var_dir)
        DISK_USED.labels("var").set(usage.used / usage.total)
    except OSError:
        pass
