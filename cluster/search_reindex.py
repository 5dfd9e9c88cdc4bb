"""``agora search reindex``: ask every API replica to rebuild its search index.

The index lives in each API replica's memory (``serve.catalog_state``), and
``cluster`` never imports ``serve``; so the command does not build an index
itself: it queues ``search.reindex_requested`` in the outbox (one
transaction), waits with a progress bar until the relay has published it, and
every replica, following the catalog topic, re-reads all products from
PostgreSQL and swaps in a fresh index (``agora_search_index_rebuilds_total``
in ``/metrics`` counts it). Replicas keep answering from the old index
meanwhile. Use it after products were changed by hand in SQL (no events).
"""

from __future__ import annotations

import asyncio
import sys
import time

from actors.writebehind import insert_outbox
from cluster import db
from cluster.services import service_urls
from cluster.settings import Settings
from streams.events import SEARCH_REINDEX_REQUESTED, make_event

PUBLISH_TIMEOUT_S = 30.0
BAR = 30


def _bar(label: str, done: float) -> None:
    filled = int(BAR * min(done, 1.0))
    sys.stdout.write(f"\r{label:28} [{'#' * filled}{'.' * (BAR - filled)}] {done:4.0%}")
    sys.stdout.flush()


async def request_reindex(database_url: str, tenant: str, namespace: str) -> tuple[int, float]:
    """Queue the request; returns (products to index, seconds until it was published)."""
    conn = await db.connect(database_url)
    try:
        _bar("counting products", 0.0)
        count = int(
            await conn.fetchval("SELECT count(*) FROM products WHERE retired_at IS NULL") or 0
        )
        _bar("counting products", 1.0)
        print()
        event = make_event(
            SEARCH_REINDEX_REQUESTED, "search", {"products": count}, int(time.time() * 1000)
        )
        await insert_outbox(conn, [event], tenant, namespace)
        started = time.monotonic()
        while True:
            sent = await conn.fetchval(
                "SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = $1::uuid", event.id
            )
            waited = time.monotonic() - started
            _bar("publishing the request", 1.0 if sent else waited / PUBLISH_TIMEOUT_S)
            if sent or sent is None:  # None: the relay already pruned the sent row
                print()
                return count, waited
            if waited > PUBLISH_TIMEOUT_S:
                print()
                raise SystemExit("the outbox relay did not publish the request: is the system up?")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def reindex(settings: Settings) -> int:
    count, waited = asyncio.run(
        request_reindex(
            service_urls(settings).database, settings.events_tenant, settings.events_namespace
        )
    )
    print(
        f"reindex requested ({count} products, published in {waited:.1f} s): every API replica"
        " re-reads the catalog and swaps in a new index (agora_search_index_rebuilds_total)"
    )
    return 0
