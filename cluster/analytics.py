"""Wiring of the analytics warehouse: its consumer actor and ``agora analytics``.

``start_warehouse`` hosts ``WarehouseConsumer`` in a detached consumer actor
(``streams.consumers.host``), as ``agora up`` does for the audit log.
``agora analytics rebuild`` replays every warehouse topic from its first
message into a fresh directory or object-store prefix (default
``<warehouse>.rebuild``; for a directory, ``--replace`` then swaps it in for
the live one, keeping the old one as ``<warehouse>.old``; an object store has
no rename, so there one points ``AGORA_WAREHOUSE_URL`` at the rebuilt prefix);
``agora analytics compact`` compacts the live warehouse's day partitions now.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from cluster import db
from cluster.services import service_urls
from cluster.settings import Settings
from streams.consumers.host import HostConfig, get_or_create_consumer
from streams.consumers.warehouse import WarehouseConsumer, replay, warehouse_topics
from streams.warehouse import Warehouse
from streams.warehouse_url import local_path


def _say(message: str) -> None:
    print(message, flush=True)


def warehouse_consumer(settings: Settings) -> WarehouseConsumer:
    return WarehouseConsumer(
        settings.events_tenant,
        settings.events_namespace,
        settings.warehouse_location,
        flush_s=settings.warehouse_flush_s,
        compact_every_s=settings.warehouse_compact_every_s,
        journal_dir=settings.warehouse_journal_dir,
    )


def start_warehouse(settings: Settings, host: HostConfig) -> Any:
    """The warehouse consumer's actor (get-or-create, started); its handle."""
    return get_or_create_consumer(settings.ray_namespace, host, warehouse_consumer(settings))


def rebuild_target(live: str, out: str | None) -> str:
    """Where a rebuild goes: ``out``, else beside the live warehouse (``<dir>.rebuild``,
    ``s3://bucket/<prefix>.rebuild?...``)."""
    if out:
        return out
    if local_path(live) is not None:
        path = Path(live)
        return str(path.with_name(path.name + ".rebuild"))
    parts = urlsplit(live)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + ".rebuild"))


def rebuild(settings: Settings, out: str | None, replace: bool, progress: bool = True) -> int:
    """Replay the warehouse topics from the start into ``out`` (must be new or empty)."""
    live_location = settings.warehouse_location
    target_location = rebuild_target(live_location, out)
    warehouse = Warehouse(target_location)
    if warehouse.store.keys():
        _say(f"{warehouse.describe()} is not empty; remove it or pass another --out")
        return 1
    if replace and not (warehouse.store.local and local_path(live_location) is not None):
        _say(
            "--replace needs a local warehouse and target (an object store has no rename):"
            f" point AGORA_WAREHOUSE_URL at {warehouse.describe()} instead"
        )
        return 1
    urls = service_urls(settings)
    topics = warehouse_topics(settings.events_tenant, settings.events_namespace)
    bar = tqdm(unit=" events", desc="replaying", disable=not progress, mininterval=0.5)

    async def run() -> int:
        pool = await db.create_pool(urls.database, max_size=2)
        try:
            return await replay(urls.pulsar, topics, pool, warehouse, bar.update)
        finally:
            await pool.close()

    started = time.monotonic()
    try:
        count = asyncio.run(run())
    finally:
        bar.close()
    files = [k for k in warehouse.store.keys() if k.endswith(".parquet")]
    _say(
        f"rebuilt {warehouse.describe()}: {count} events from {len(topics)} topics into"
        f" {len(files)} files ({time.monotonic() - started:.1f}s)"
    )
    if replace:
        live, target = settings.warehouse_root, Path(target_location)
        old = live.with_name(live.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if live.exists():
            live.rename(old)
        target.rename(live)
        _say(f"{live} replaced (previous copy in {old})")
    return 0


def compact(settings: Settings) -> int:
    warehouse = Warehouse(settings.warehouse_location)
    days = warehouse.compact()
    _say(f"compacted {days} day partitions in {warehouse.describe()}")
    return 0


def add_parser(sub: Any) -> None:
    """``agora analytics ...`` on the top-level subparsers."""
    analytics = sub.add_parser("analytics", help="the analytics warehouse").add_subparsers(
        dest="analytics_command", required=True
    )
    again = analytics.add_parser(
        "rebuild", help="replay the events from the topics' start into a fresh warehouse"
    )
    again.add_argument("--out", help="target directory or s3:// URL (default: <warehouse>.rebuild)")
    again.add_argument(
        "--replace", action="store_true", help="then swap it in for the live warehouse"
    )
    again.add_argument("--no-progress", action="store_true", help="no progress bar")
    analytics.add_parser("compact", help="compact the day partitions now")


def main(settings: Settings, args: argparse.Namespace) -> int:
    if args.analytics_command == "rebuild":
        return rebuild(settings, args.out, args.replace, not args.no_progress)
    return compact(settings)
