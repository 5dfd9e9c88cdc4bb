"""Shared fixtures. Integration and e2e tiers run against the real system that
``agora up`` starts (embedded defaults unless AGORA_*_URL are set): if it is
already running it is reused, otherwise it is started here and stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cluster import infra
from cluster.db import connect as connect_db
from cluster.db import migrate as migrate_db
from cluster.settings import get_settings

# Webhook delivery tests post to a receiver on loopback; production refuses private URLs.
os.environ.setdefault("AGORA_WEBHOOKS_ALLOW_PRIVATE", "1")

# Ray reads its auth settings when first imported; test modules import ray.
infra.ensure_dirs(get_settings())
os.environ.update(infra.ray_env(get_settings()))


@pytest.fixture
async def private_database(tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a private, migrated PostgreSQL (pgserver) for one test, stopped after it:
    for tests of our database code that need no running system."""
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    uri = server.get_uri()
    conn = await connect_db(uri)
    try:
        await migrate_db(conn)
    finally:
        await conn.close()
    yield uri
    server.cleanup()


def _ready(settings) -> bool:
    url = f"http://{settings.http_host}:{settings.http_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def system():
    """The running Agora system (started for the session if it was not up)."""
    from cluster import cli

    settings = get_settings()
    started = False
    if not _ready(settings):
        cli.up(settings)
        started = True
    cli.connect_ray(settings)
    yield settings
    if started:
        cli.down(settings)


@pytest.fixture(scope="session")
def services(system):
    from cluster.services import service_urls

    return service_urls(system)


@pytest.fixture(scope="session")
def db_url(services) -> str:
    return services.database


@pytest.fixture(scope="session")
def pulsar_url(services) -> str:
    return services.pulsar


@pytest.fixture(scope="session")
def ray_ns(system) -> str:
    return system.ray_namespace


@pytest.fixture(scope="session")
def base_url(system) -> str:
    return f"http://{system.http_host}:{system.http_port}"


@pytest.fixture(scope="session")
async def db(db_url):
    from cluster.db import create_pool

    pool = await create_pool(db_url, max_size=4)
    yield pool
    await pool.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``check`` until it is true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
