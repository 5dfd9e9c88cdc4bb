"""The shard directory: which named, detached shard actor owns a key.

``HashRing`` is pure consistent hashing with virtual nodes (no Ray). ``Directory``
is the one place that computes shard names, creates shard actors and caches
their handles; nobody else does. ``RingSpec`` is a kind's durable, versioned ring
(live rescaling, ``cluster.scaling``): directories ``adopt`` newer epochs, and a
shard asks ``Ownership`` which keys it keeps, gives away or gains.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
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


@functools.lru_cache(maxsize=64)
def ring_of(kind: str, shards: int, vnodes: int = 64) -> HashRing:
    """The ring of ``shards`` shards of ``kind`` (cached: rings are rebuilt on every change)."""
    return HashRing([shard_name(kind, i) for i in range(shards)], vnodes)


@dataclass(frozen=True)
class RingSpec:
    """One kind's ring as stored durably: its ``epoch``, its shard count, and, while a live
    rescale hands keys over, the count it hands them over from (``previous``)."""

    kind: str
    epoch: int
    shards: int
    previous: int | None = None

    @property
    def handing_off(self) -> bool:
        return self.previous is not None

    def names(self) -> list[str]:
        """Every shard taking part: the new ones, and the old ones while handing off."""
        return [shard_name(self.kind, i) for i in range(max(self.shards, self.previous or 0))]

    def settled(self) -> RingSpec:
        return RingSpec(self.kind, self.epoch, self.shards)


class Ownership:
    """What the shard ``name`` owns under ``spec`` (pure: the shell asks it on every key).

    ``owns``: the key is this shard's under the new ring. ``gains``: it is, but another
    shard owned it under the previous ring, so it is loaded only once the handoff ended
    (the old owner has flushed it by then).
    """

    def __init__(self, name: str, spec: RingSpec, vnodes: int = 64) -> None:
        self.name = name
        self.spec = spec
        self._ring = ring_of(spec.kind, spec.shards, vnodes)
        self._previous = (
            None if spec.previous is None else ring_of(spec.kind, spec.previous, vnodes)
        )

    def owner(self, key: str) -> str:
        return self._ring.node_for(key)

    def owns(self, key: str) -> bool:
        return self._ring.node_for(key) == self.name

    def gains(self, key: str) -> bool:
        return self._previous is not None and self._previous.node_for(key) != self.name


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
        self._kinds = dict(kinds)
        self._namespace = namespace
        self._rings = {
            kind: HashRing([shard_name(kind, i) for i in range(count)], vnodes)
            for kind, (_cls, count) in kinds.items()
        }
        self._vnodes = vnodes
        self._epochs = {kind: 0 for kind in kinds}
        self._handles: dict[str, Any] = {}
        self._actor_options = actor_options or (lambda _kind: {})
        self._env_factory = env_factory

    def epoch(self, kind: str) -> int:
        """The ring epoch this directory follows (0: the settings' counts, never rescaled)."""
        return self._epochs[kind]

    def adopt(self, kind: str, epoch: int, shards: int) -> bool:
        """Follow a newer ring of ``kind`` (from PostgreSQL, or a shard's "moved" answer).

        False (and nothing changes) when ``epoch`` is not newer than the one followed.
        """
        if epoch <= self._epochs[kind]:
            return False
        cls, _count = self._kinds[kind]
        self._kinds[kind] = (cls, shards)
        self._rings[kind] = ring_of(kind, shards, self._vnodes)
        self._epochs[kind] = epoch
        return True

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
