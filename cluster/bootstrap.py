"""The one place that wires Agora together: shard directory, shard environments, ports.

Every process (API replica, shard actor, CLI, test) builds its adapters here,
once, from settings; nothing connects at import time. Shard actors receive
``shard_env`` (a module-level function, so Ray pickles it by reference) and call
it in their own process to build their store, pool, clock and ports: actors
never import this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.cart.actor import CartShard
from actors.directory import Directory, RingSpec
from actors.inventory.actor import InventoryShard
from actors.messages import now_ms
from actors.order.actor import OrderShard
from actors.order.ports import Ports
from actors.session.actor import SessionShard
from actors.shard import ShardEnv
from actors.writebehind import Store
from cluster.adapters.order_ports import order_ports
from cluster.adapters.postgres import DocumentStore, InventoryStore, OrderStore
from cluster.adapters.rings import PostgresRings
from cluster.db import connect, create_pool
from cluster.services import service_urls
from cluster.settings import Settings, get_settings
from streams import tracing

# The kinds whose keys move between shards live; the others keep their settings' count.
MOVABLE_KINDS = ("cart", "session", "inventory", "order")


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

    # Every shard kind follows its durable ring (``agora scale``).
    rings = PostgresRings() if kind in MOVABLE_KINDS else None
    if kind != "order":
        return ShardEnv(settings=settings, store=_store(kind), open_pool=open_pool, rings=rings)
    directory = shard_directory(settings)
    return ShardEnv(
        settings=settings,
        store=_store(kind),
        open_pool=open_pool,
        directory=directory,
        ports=saga_ports(settings, open_pool, directory),
        rings=rings,
    )


def saga_ports(settings: Settings, open_pool: Any, directory: Directory) -> Ports:
    """The order saga's ports (carts, stock, pricing, fraud, payments), once per shard process."""
    return order_ports(settings, open_pool, directory, now_ms, service_urls(settings))


def env_for(kind: str, settings: Settings) -> Any:
    """An env factory for a shard created outside the directory (tests, benchmarks)."""
    return partial(shard_env, kind=kind, settings=settings)


def on_node(node_id: str) -> Callable[[str], dict[str, Any]]:
    """Shard actor options that create (and restart) every shard on Ray node ``node_id``,
    or on any live node once that one is gone (soft affinity). Shards ask for no CPU, so
    without this Ray may put a new shard on any node; a shard keeps the options it was
    created with across restarts (``loadtests.two_nodes`` and the node-loss test use it).

    Ray 2.60 does not honour a soft affinity for an actor that requests no resource at
    all (here it landed on the other node in 12 of 20 tries; with a resource, in 0 of 8),
    so the options also ask for one byte of ``memory``, a resource every node has.
    """
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return lambda _kind: {"scheduling_strategy": strategy, "memory": 1}


def shard_directory(
    settings: Settings,
    actor_options: Callable[[str], dict[str, Any]] | None = None,
    env_factory: Callable[[str], ShardEnv] = shard_env,
    rings: dict[str, RingSpec] | None = None,
) -> Directory:
    """Every shard kind with its actor class and count; shards get ``env_factory``
    (``shard_env``: built from the shard process's own settings) and ``actor_options``.
    The counts are the settings' until ``rings`` (the durable ones, ``load_rings``) or a
    shard's "moved" answer says newer."""
    directory = Directory(
        {
            "cart": (CartShard, settings.cart_shards),
            "session": (SessionShard, settings.session_shards),
            "inventory": (InventoryShard, settings.inventory_shards),
            "order": (OrderShard, settings.order_shards),
        },
        namespace=settings.ray_namespace,
        vnodes=settings.virtual_nodes,
        actor_options=actor_options,
        env_factory=env_factory,
    )
    for spec in (rings or {}).values():
        directory.adopt(spec.kind, spec.epoch, spec.shards)
    return directory


async def load_rings(conn: Any) -> dict[str, RingSpec]:
    """The durable rings of the kinds ever rescaled (``shard_rings``)."""
    return await PostgresRings().load_all(conn)


async def current_directory(settings: Settings) -> Directory:
    """A directory on the durable rings: it lists every shard that may hold state."""
    conn = await connect(service_urls(settings).database)
    try:
        return shard_directory(settings, rings=await load_rings(conn))
    finally:
        await conn.close()


def place_shard(
    settings: Settings,
    name: str,
    node_id: str,
    env_factory: Callable[[str], ShardEnv] = shard_env,
    attempts: int = 5,
) -> Any:
    """Create shard ``name`` (not running) on Ray node ``node_id``; returns its handle.

    Where it landed is checked: a shard elsewhere (soft affinity falls back to Ray's
    choice when it cannot place it) is stopped, as a crash would stop it, before anyone
    called it, and created again.
    """
    directory = shard_directory(settings, actor_options=on_node(node_id), env_factory=env_factory)
    for _ in range(attempts):
        handle = directory.handle(name)
        if ray.get(handle.stats.remote(), timeout=120)["node_id"] == node_id:
            return handle
        ray.kill(handle, no_restart=True)
        directory.forget(name)
        deadline = time.monotonic() + 30
        while _named(settings, name) and time.monotonic() < deadline:
            time.sleep(0.1)
    raise RuntimeError(f"{name} could not be placed on node {node_id}")


def _named(settings: Settings, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=settings.ray_namespace)
    except ValueError:
        return False
    return True
