"""Bootstrap of one API replica: the adapters it talks to, built once from settings.

``ready()`` connects on first use and fills the replica's in-memory catalog
(``serve.catalog_state``): it starts the event readers first, then loads from
PostgreSQL, so no change published after the load is missed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

import redis.asyncio as aioredis

from actors.clients import CartClient, ShardOps
from cluster.bootstrap import load_rings, shard_directory
from cluster.db import create_pool
from cluster.services import cart_token_secret, service_urls
from cluster.settings import Settings, get_settings
from serve.auth import keys
from serve.auth.tokens import TokenIssuer, TokenVerifier, jwks
from serve.carttoken import CartTokens
from serve.catalog_state import TOPIC_EVENTS, CatalogState
from serve.ratelimit import RateLimiter
from streams.events import topic_for
from streams.follow import Follower

FOLLOW_CONNECT_S = 5.0

_RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime (one per API replica), built on first use."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime(get_settings())
    return _RUNTIME


class TTLCache:
    """A small per-replica read-through cache (products change rarely)."""

    def __init__(self, ttl_s: float, max_items: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: Any, value: Any) -> None:
        if len(self._items) >= self.max_items:
            self._items.clear()
        self._items[key] = (time.monotonic() + self.ttl_s, value)


class Runtime:
    """Lazily connected resources of a replica; nothing connects at import time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: Any = None
        self.redis: Any = None
        self.urls: Any = None
        self.directory = shard_directory(settings)
        self.carts = CartClient(self.directory)
        self.shards = ShardOps(self.directory)
        self.catalog: CatalogState | None = None
        self._filling: CatalogState | None = None  # being warmed: events reach it already
        self.follower: Follower | None = None
        self.tokens: CartTokens | None = None
        self.limiter: Any = None
        self.issuer: Any = None
        self.verifier: Any = None
        self.jwks: dict[str, Any] = {"keys": []}
        self._keys_loaded_at = 0.0
        self._keys_lock = asyncio.Lock()
        self.facets = TTLCache(ttl_s=30.0, max_items=1000)
        self._lock = asyncio.Lock()
        self._warming: asyncio.Task[None] | None = None

    async def ready(self) -> Runtime:
        if self.catalog is not None:
            return self
        async with self._lock:
            if self.pool is None:
                self.urls = service_urls(self.settings)
                self.tokens = CartTokens(cart_token_secret(self.settings))
                self.redis = aioredis.from_url(self.urls.redis, socket_timeout=1.0)
                self.limiter = RateLimiter(self.redis, secret=cart_token_secret(self.settings))
                self.pool = await create_pool(self.urls.database, min_size=2, max_size=8)
                # Rescaled kinds (``agora scale``): every shard, for health and metrics.
                async with self.pool.acquire() as conn:
                    for spec in (await load_rings(conn)).values():
                        self.directory.adopt(spec.kind, spec.epoch, spec.shards)
            if self.catalog is None:
                # One warm-up task, shielded from the request that started it: a request
                # cancelled meanwhile (a client, or a health probe, hanging up: Serve
                # cancels its handler) used to cancel the warm-up half way, and the next
                # request started another, so a catalog whose load takes longer than a
                # probe's timeout (100,000 products: ~30 s) never became ready.
                if self._warming is None or self._warming.done():
                    self._warming = asyncio.get_running_loop().create_task(self._warm_catalog())
                await asyncio.shield(self._warming)
        return self

    async def _warm_catalog(self) -> None:
        """Readers on the catalog's topics first, then the start-up load from PostgreSQL."""
        catalog = self._filling = CatalogState(self.pool)
        if self.follower is None:
            s = self.settings
            topics = sorted(
                {topic_for(e.name, s.events_tenant, s.events_namespace) for e in TOPIC_EVENTS}
            )
            loop = asyncio.get_running_loop()
            self.follower = Follower(self.urls.pulsar, topics, self._on_event, self._on_gap, loop)
            self.follower.start()
            await loop.run_in_executor(None, self.follower.wait_connected, FOLLOW_CONNECT_S)
        await catalog.warm()
        self.catalog = catalog

    # Events seen while the catalog warms are applied to it (they may be newer than its
    # load); dropping them lost, until the next event naming it, a product edited, an
    # order confirmed or stock moved during the warm-up (seconds; ~30 s at 100k products).
    def _on_event(self, event: Any) -> None:
        catalog = self.catalog or self._filling
        if catalog is not None:
            catalog.on_event(event)

    def _on_gap(self) -> None:
        catalog = self.catalog or self._filling
        if catalog is not None:
            catalog.on_gap()

    async def keys(self, force: bool = False) -> Runtime:
        """Signing and verification keys, reloaded every ``signing_key_cache_s``."""
        await self.ready()
        fresh = time.monotonic() - self._keys_loaded_at < self.settings.signing_key_cache_s
        if self.verifier is not None and fresh and not force:
            return self
        async with self._keys_lock:
            if self.verifier is not None and time.monotonic() - self._keys_loaded_at < 1.0:
                return self
            s = self.settings
            async with self.pool.acquire() as conn:
                signing, verifying = await keys.load(
                    conn, s.access_token_ttl_s + s.jwt_leeway_s + int(s.signing_key_cache_s)
                )
            self.issuer = TokenIssuer(signing, s.jwt_issuer, s.jwt_audience, s.access_token_ttl_s)
            self.verifier = TokenVerifier(
                {k.kid: k.public_jwk for k in verifying},
                s.jwt_issuer,
                s.jwt_audience,
                s.jwt_leeway_s,
            )
            self.jwks = jwks(verifying)
            self._keys_loaded_at = time.monotonic()
        return self

    async def check_database(self) -> None:
        async with self.pool.acquire(timeout=1.0) as conn:
            await conn.fetchval("SELECT 1", timeout=1.0)

    async def check_redis(self) -> None:
        await asyncio.wait_for(self.redis.ping(), 1.0)

    async def check_broker(self) -> None:
        parsed = urlparse(self.urls.pulsar)
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname, parsed.port or 6650), 1.0
        )
        writer.close()

    async def check_shards(self) -> None:
        await asyncio.wait_for(self.shards.ping("cart"), 5.0)
