"""The one place that wires Agora together: shard directory, shard environments, ports.

Every process (API replica, shard actor, CLI, test) builds its adapters here,
once, from settings; nothing connects at import time. Shard actors receive
``shard_env`` (a module-level function, so Ray pickles it by reference) and call
it in their own process to build their store, pool, clock and ports: actors
never import this module.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from actors.cart.actor import CartShard
from actors.directory import Directory
from actors.inventory.actor import InventoryShard
from actors.messages import now_ms
from actors.order.actor import OrderShard
from actors.order.ports import Ports
from actors.session.actor import SessionShard
from actors.shard import ShardEnv
from actors.writebehind import Store
from cluster.adapters.order_ports import order_ports
from cluster.adapters.postgres import DocumentStore, InventoryStore, OrderStore
from cluster.db import create_pool
from cluster.services import service_urls
from cluster.settings import Settings, get_settings
from streams import tracing


def _store(kind: str) -> Store:
    stores: dict[str, Store] = {
        "cart": DocumentStore("carts", "cart_id"),
        "session": DocumentStore("user_sessions", "user_id"),
        "inventory": InventoryStore(),
        "order": OrderStore(),
    }
    return stores[kind]


def shard_env(name: str, *, kind: str | None = None, settings: Settings | None = None) -> ShardEnv:
    """The environment of shard ``name`` (``agora:<kind>:<n>``), built in the shard's process."""
    settings = settings or get_settings()
    kind = kind or name.split(":")[1]
    tracing.setup(tracing.TracingConfig.from_env(), f"agora-{kind}")

    pool: list[Any] = []
    pool_lock = asyncio.Lock()

    async def open_pool() -> Any:
        """The shard's one pool, opened on first use (the shell and its ports share it)."""
        async with pool_lock:
            if not pool:
                size = 6 if kind == "order" else 2
                pool.append(await create_pool(service_urls(settings).database, max_size=size))
        return pool[0]

    if kind != "order":
        return ShardEnv(settings=settings, store=_store(kind), open_pool=open_pool)
    directory = shard_directory(settings)
    return ShardEnv(
        settings=settings,
        store=_store(kind),
        open_pool=open_pool,
        directory=directory,
        ports=saga_ports(settings, open_pool, directory),
    )


def saga_ports(settings: Settings, open_pool: Any, directory: Directory) -> Ports:
    """The order saga's ports (carts, stock, pricing, fraud, payments), once per shard process."""
    return order_ports(settings, open_pool, directory, now_ms, service_urls(settings))


def env_for(kind: str, settings: Settings) -> Any:
    """An env factory for a shard created outside the directory (tests, benchmarks)."""
    return partial(shard_env, kind=kind, settings=settings)


def shard_directory(settings: Settings) -> Directory:
    """Every shard kind with its actor class and count; shards get ``shard_env``."""
    return Directory(
        {
            "cart": (CartShard, settings.cart_shards),
            "session": (SessionShard, settings.session_shards),
            "inventory": (InventoryShard, settings.inventory_shards),
            "order": (OrderShard, settings.order_shards),
        },
        namespace=settings.ray_namespace,
        vnodes=settings.virtual_nodes,
        env_factory=shard_env,
    )
