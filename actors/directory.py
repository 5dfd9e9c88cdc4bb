"""The shard directory: which named, detached shard actor owns a key.

``HashRing`` is pure consistent hashing with virtual nodes (no Ray). ``Directory``
is the one place that computes shard names, creates shard actors and caches
their handles; nobody else does.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from typing import Any


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing of keys onto named nodes, ``vnodes`` points per node."""

    def __init__(self, nodes: list[str], vnodes: int = 64) -> None:
        if not nodes:
            raise ValueError("a ring needs at least one node")
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        points = sorted((_hash64(f"{node}#{i}"), node) for node in nodes for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._nodes = [n for _, n in points]
        self.nodes = list(nodes)

    def node_for(self, key: str) -> str:
        index = bisect.bisect_right(self._hashes, _hash64(key)) % len(self._hashes)
        return self._nodes[index]


def shard_name(kind: str, index: int) -> str:
    return f"agora:{kind}:{index}"


class Directory:
    """Maps ``(kind, key)`` to a shard actor handle; creates missing shards on demand.

    ``kinds`` maps a kind to ``(actor_class, shard_count)``; the actor class is a
    ``ray.remote`` class. All Ray calls about shard placement live here. Each
    shard is created with ``env_factory`` (from ``cluster.bootstrap``), which it
    calls in its own process to build its store, pool, clock and ports.
    """

    def __init__(
        self,
        kinds: dict[str, tuple[Any, int]],
        namespace: str,
        vnodes: int = 64,
        actor_options: Callable[[str], dict[str, Any]] | None = None,
        env_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self._kinds = kinds
        self._namespace = namespace
        self._rings = {
            kind: HashRing([shard_name(kind, i) for i in range(count)], vnodes)
            for kind, (_cls, count) in kinds.items()
        }
        self._handles: dict[str, Any] = {}
        self._actor_options = actor_options or (lambda _kind: {})
        self._env_factory = env_factory

    def shard_for(self, kind: str, key: str) -> str:
        return self._rings[kind].node_for(key)

    def shard_names(self, kind: str) -> list[str]:
        return list(self._rings[kind].nodes)

    def handle(self, name: str) -> Any:
        """A cached handle to the named shard, created detached if it does not exist."""
        cached = self._handles.get(name)
        if cached is not None:
            return cached
        kind = name.split(":")[1]
        cls, _count = self._kinds[kind]
        handle = cls.options(
            name=name,
            namespace=self._namespace,
            lifetime="detached",
            max_restarts=-1,
            get_if_exists=True,
            **self._actor_options(kind),
        ).remote(name, self._env_factory)
        self._handles[name] = handle
        return handle

    def get(self, kind: str, key: str) -> Any:
        return self.handle(self.shard_for(kind, key))

    def forget(self, name: str) -> None:
        """Drop a cached handle (after the actor was killed for good)."""
        self._handles.pop(name, None)

    def all_handles(self, kind: str) -> list[Any]:
        return [self.handle(name) for name in self.shard_names(kind)]
