"""What the Ray-free live-rescaling tests of one movable kind share (``test_rescale_inventory``,
``test_rescale_order``): in-process shells by name on one store and one ring store, a real
``Directory`` handing out in-process handles, and ``cluster.scaling.rescale`` over them.
The stores and handles are those of ``test_rescale`` (the cart kind's own world).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any, ClassVar

from actors.clients import ShardOps
from actors.directory import Directory, HashRing, shard_name
from actors.shard import ShardEnv, ShardShell
from cluster.scaling import rescale
from tests.unit.test_rescale import MemoryRings, _Handle


def shard_settings(kind: str, shards: int, **extra: Any) -> SimpleNamespace:
    """The shell's settings for ``shards`` shards of ``kind`` (quick flushes), plus ``extra``."""
    return SimpleNamespace(
        flush_batch_size=100,
        flush_interval_ms=5,
        shard_max_keys=10_000,
        virtual_nodes=16,
        events_tenant="agora",
        events_namespace="events",
        **{f"{kind}_shards": shards},
        **extra,
    )


def split_by_move(
    kind: str, before: int, after: int, keys: Iterable[str]
) -> tuple[list[str], list[str]]:
    """``keys`` that change owner from ``before`` to ``after`` shards, and those that stay."""
    old = HashRing([shard_name(kind, i) for i in range(before)], 16)
    new = HashRing([shard_name(kind, i) for i in range(after)], 16)
    moving, staying = [], []
    for key in keys:
        (moving if old.node_for(key) != new.node_for(key) else staying).append(key)
    return moving, staying


class LocalDirectory(Directory):
    """The real directory, with the world's in-process shells where Ray actors would be."""

    def __init__(self, shards: int, world: ShardWorld) -> None:
        super().__init__({world.kind: (world.impl, shards)}, namespace="test", vnodes=16)
        self.world = world

    def handle(self, name: str) -> Any:
        return _Handle(self.world.shell(name))


class ShardWorld:
    """Shells of one kind by name on one store, pool and ring store, as the shard actors
    share one PostgreSQL. A subclass names ``kind`` and ``impl`` and calls ``setup``; its
    ``clock`` (and, for a kind with ports, ``ports()``) go into every shell's env."""

    kind: ClassVar[str]
    impl: ClassVar[type[ShardShell[Any]]]
    clock: Callable[[], int]  # the shells' clock (Unix ms): a method or a fake clock object

    def setup(self, settings: SimpleNamespace, store: Any, pool: Any) -> None:
        self.settings, self.store, self.pool = settings, store, pool
        self.rings = MemoryRings()
        self.shells: dict[str, Any] = {}

    def ports(self) -> Any:
        return None

    def env(self) -> ShardEnv:
        async def open_pool() -> Any:
            return self.pool

        return ShardEnv(
            settings=self.settings,
            store=self.store,
            open_pool=open_pool,
            clock=self.clock,
            ports=self.ports(),
            rings=self.rings,
        )

    def shell(self, name: str) -> Any:
        if name not in self.shells:
            self.shells[name] = self.impl(name, self.env())
        return self.shells[name]

    def shards(self) -> int:
        """The shard count of the settings (the ring before any rescale)."""
        return int(getattr(self.settings, f"{self.kind}_shards"))

    def directory(self) -> LocalDirectory:
        """A directory on the stored ring, as ``cluster.bootstrap.current_directory`` builds."""
        directory = LocalDirectory(self.shards(), self)
        for spec in self.rings.specs.values():
            directory.adopt(spec.kind, spec.epoch, spec.shards)
        return directory

    async def rescale(self, target: int) -> Any:
        return await rescale(
            self.kind,
            target,
            rings=self.rings,
            connect=lambda: contextlib.nullcontext(None),
            ops=ShardOps(self.directory()),
            default_shards=self.shards(),
        )

    def row(self, key: str) -> dict[str, Any]:
        return self.store.rows[key][0]  # type: ignore[no-any-return]
