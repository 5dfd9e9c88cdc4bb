"""``agora search reindex``: ask every API replica to rebuild its search index.

The index lives in each API replica's memory (``serve.catalog_state``), and
``cluster`` never imports ``serve``; so the command does not build an index
itself: it queues ``search.reindex_requested`` in the outbox (one
transaction), waits with a progress bar until the relay has published it, and
every replica, following the catalog topic, re-reads all products from
PostgreSQL and swaps in a fresh index (``agora_search_index_rebuilds_total``
in ``/metrics`` counts it). Replicas keep answering from the old index
meanwhile. Use it after products were changed by hand in SQL (no events).

The rebuild's own progress comes from the API's ``/metrics``
(``agora_search_index_build_progress``, 0..1, and the rebuild counter moving
past what it was before the request): the bar follows it until the rebuild
is done. ``/metrics`` is one replica's view (the one that answers), so with
several API replicas the bar shows whichever answered; each builds the same
catalog. If the API does not answer, the command says the request was
published and stops there.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.request
from collections.abc import Callable

from actors.writebehind import insert_outbox
from cluster import db
from cluster.services import service_urls
from cluster.settings import Settings
from streams.events import SEARCH_REINDEX_REQUESTED, make_event

PUBLISH_TIMEOUT_S = 30.0
REBUILD_TIMEOUT_S = 600.0
BAR = 30
_METRIC = re.compile(r"^(agora_search_index_(?:rebuilds_total|build_progress)) ([0-9.e+-]+)$", re.M)


def index_metrics(text: str) -> dict[str, float]:
    """``agora_search_index_rebuilds_total`` and ``..._build_progress`` from Prometheus text."""
    return {name: float(value) for name, value in _METRIC.findall(text)}


def read_index_metrics(base_url: str) -> dict[str, float] | None:
    """The two metrics from the API's ``/metrics``; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as reply:  # noqa: S310
            return index_metrics(reply.read().decode())
    except OSError:
        return None


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


def follow_rebuild(
    base_url: str,
    before: float,
    timeout_s: float = REBUILD_TIMEOUT_S,
    read: Callable[[str], dict[str, float] | None] = read_index_metrics,
) -> float | None:
    """Show the rebuild's progress until the replica's rebuild counter passes ``before``;
    seconds it took, or None if the API stopped answering or the time ran out."""
    started = time.monotonic()
    building = False  # the gauge still shows the last build's 1.0 until this one starts
    while time.monotonic() - started < timeout_s:
        metrics = read(base_url)
        if metrics is None:
            break
        if metrics.get("agora_search_index_rebuilds_total", 0.0) > before:
            _bar("rebuilding the index", 1.0)
            print()
            return time.monotonic() - started
        progress = metrics.get("agora_search_index_build_progress", 0.0)
        building = building or progress < 1.0
        _bar("rebuilding the index", progress * 0.99 if building else 0.0)
        time.sleep(0.2)
    print()
    return None


def reindex(settings: Settings) -> int:
    base_url = f"http://{settings.http_host}:{settings.http_port}"
    before = read_index_metrics(base_url)
    count, waited = asyncio.run(
        request_reindex(
            service_urls(settings).database, settings.events_tenant, settings.events_namespace
        )
    )
    print(f"reindex requested ({count} products, published in {waited:.1f} s)")
    if before is None:
        print(
            f"the API at {base_url} does not answer: every API replica re-reads the catalog"
            " and swaps in a new index when it is up (agora_search_index_rebuilds_total)"
        )
        return 0
    took = follow_rebuild(base_url, before.get("agora_search_index_rebuilds_total", 0.0))
    if took is None:
        print("no rebuild reported by the API in time: see agora_search_index_rebuilds_total")
        return 1
    print(f"index rebuilt in {took:.1f} s ({count} products); replicas swap in their new index")
    return 0
