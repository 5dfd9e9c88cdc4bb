"""The shell shared by every shard actor kind: lazy loading, LRU eviction, write-behind.

A kind supplies how to turn a stored document into its state and back; the
shell owns the in-memory map of keys, the flusher, the durable path, drain and
stats. Everything outside the process is injected as a ``ShardEnv`` (settings,
the kind's store, how to open the database pool, the clock, the kind's ports),
built by ``cluster.bootstrap``: a shell runs in a unit test with an in-memory
store and a fake clock, and actors never import the wiring.

Live rescaling (``movable`` kinds, with a ``rings`` store): the shell follows a
durable ring (``actors.directory.RingSpec``), loaded with its pool and pushed by
``adopt_ring``. A key the ring gives to another shard is answered
``Rejected("moved")`` (through ``call``/``traced``) once it has been flushed; a
key it gains from another shard waits until the handoff has ended, so it is
loaded from PostgreSQL only after its old owner wrote it. A kind with work of its
own on its keys (the order shard's sagas) stops that work in ``_hand_over`` before
the keys given away are flushed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import ray
from opentelemetry.trace import SpanKind

from actors.directory import Ownership, RingSpec
from actors.messages import MOVED, Rejected, now_ms
from actors.writebehind import DirtyTracker, Flusher, Store
from streams.events import Envelope
from streams.tracing import extract, span, stamp


class Document(Protocol):
    version: int

    def to_doc(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Document)

# A key gained in a handoff waits this long for the handoff to end, then re-reads the ring.
HANDOFF_WAIT_S = 5.0


class RingStore(Protocol):
    """The durable ring of each kind (``cluster.adapters.rings``)."""

    async def load(self, conn: Any, kind: str) -> RingSpec | None:
        """The kind's ring, or None when it was never rescaled (the settings' count)."""


class KeyMoved(Exception):
    """The key belongs to another shard under the ring this shard follows."""

    def __init__(self, key: str, owner: str, spec: RingSpec) -> None:
        super().__init__(f"{key} is owned by {owner} (ring epoch {spec.epoch})")
        self.owner = owner
        self.spec = spec

    def rejection(self) -> Rejected:
        return Rejected(MOVED, str(self), ring=(self.spec.epoch, self.spec.shards))


class HandoffPending(RuntimeError):
    """A gained key waited ``HANDOFF_WAIT_S`` and the handoff has still not ended."""


@dataclass(frozen=True)
class ShardEnv:
    """What a shard needs from outside, injected when the directory creates it.

    ``settings`` is read by attribute (flush, eviction and kind rules);
    ``open_pool`` opens the database pool once; ``ports`` are the kind's own
    (the order saga's ``Ports``); ``directory`` routes calls to other shards;
    ``rings`` is the durable ring store (None: the shard owns what it is asked).
    """

    settings: Any
    store: Store
    open_pool: Callable[[], Awaitable[Any]]
    clock: Callable[[], int] = now_ms
    ports: Any = None
    directory: Any = None
    rings: RingStore | None = None


EnvFactory = Callable[[str], ShardEnv]


def _protocol(shell: Any, method: str) -> Callable[..., Any]:
    """A public protocol method of ``shell`` (never a private one, nor an entry point)."""
    target = None if method.startswith("_") else getattr(shell, method, None)
    if not callable(target) or method in ("traced", "call"):
        raise AttributeError(f"{type(shell).__name__} has no method {method!r}")
    return target  # type: ignore[no-any-return]


async def _dispatch(target: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        result = target(*args)
        return await result if inspect.isawaitable(result) else result
    except KeyMoved as moved:
        return moved.rejection()


class ShardShell(ABC, Generic[S]):
    """Owns many states of one kind; subclasses add the protocol methods."""

    # Whether this kind's keys can move between shards live (``agora scale``).
    movable: ClassVar[bool] = False

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        self.name = name
        self.env = env if isinstance(env, ShardEnv) else env(name)
        self.settings = self.env.settings
        self.store = self.env.store
        self.clock = self.env.clock
        self.states: OrderedDict[str, S] = OrderedDict()
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._loading: dict[str, asyncio.Future[S]] = {}
        self.flusher = Flusher(
            DirtyTracker(self.settings.flush_batch_size, self.settings.flush_interval_ms),
            self.store,
            self._acquire,
            self._snapshot,
            clock=self.clock,
            topics=(self.settings.events_tenant, self.settings.events_namespace),
        )
        self.loads = 0
        self.evictions = 0
        self.ring: Ownership | None = None
        self._follows = self._is_ring_member()
        self._settled = asyncio.Event()
        self.moved_out = 0
        self.handoffs = 0

    @abstractmethod
    def new_state(self, key: str) -> S:
        """The state of a key never stored before."""

    @abstractmethod
    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> S:
        """The state of a key from its stored document."""

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    pool = await self.env.open_pool()
                    if self._follows_ring():
                        await self._load_ring(pool)
                    self._pool = pool
                    self.flusher.start()
        return self._pool

    def _follows_ring(self) -> bool:
        return self._follows

    def _is_ring_member(self) -> bool:
        """A movable kind's directory shard (``agora:<kind>:<n>``) with a ring store; a shard
        made apart under another name (tests, benchmarks) owns whatever it is asked."""
        if not self.movable or self.env.rings is None:
            return False
        parts = self.name.split(":")
        return (
            len(parts) == 3
            and parts[0] == "agora"
            and parts[2].isdigit()
            and hasattr(self.settings, f"{parts[1]}_shards")
        )

    @property
    def kind(self) -> str:
        return self.name.split(":")[1] if self.name.count(":") == 2 else type(self).__name__

    async def _load_ring(self, pool: Any) -> None:
        assert self.env.rings is not None
        async with pool.acquire() as conn:
            spec = await self.env.rings.load(conn, self.kind)
        if spec is None:
            spec = RingSpec(self.kind, 0, int(getattr(self.settings, f"{self.kind}_shards")))
        if self.ring is None or spec.epoch >= self.ring.spec.epoch:
            self._set_ring(spec)

    def _set_ring(self, spec: RingSpec) -> None:
        self.ring = Ownership(self.name, spec, int(getattr(self.settings, "virtual_nodes", 64)))
        if spec.handing_off:
            self._settled.clear()
        else:
            self._settled.set()

    async def _route(self, key: str) -> None:
        """Raise ``KeyMoved`` for a key another shard owns; hold a gained key until the
        handoff has ended (its old owner has flushed it by then)."""
        if not self._follows_ring():
            return
        if self.ring is None:
            await self._get_pool()
        assert self.ring is not None
        if not self.ring.owns(key):
            raise KeyMoved(key, self.ring.owner(key), self.ring.spec)
        if key in self.states or not self.ring.gains(key):
            return
        try:
            await asyncio.wait_for(self._settled.wait(), self._handoff_wait_s())
        except TimeoutError:
            # A handoff that ended while this shard restarted: the store knows.
            await self._load_ring(await self._get_pool())
            if self.ring.spec.handing_off:
                raise HandoffPending(f"{key}: the ring handoff has not ended") from None

    def _handoff_wait_s(self) -> float:
        """How long a gained key waits for the handoff to end (its old owner's flush)."""
        return HANDOFF_WAIT_S

    def _acquire(self) -> Any:
        return self._pool.acquire()

    def _snapshot(self, key: str) -> tuple[Any, int] | None:
        state = self.states.get(key)
        return None if state is None else (state.to_doc(), state.version)

    async def state(self, key: str) -> S:
        """The state of ``key``, loaded from PostgreSQL on first use after a (re)start.

        Raises ``KeyMoved`` when the ring gives ``key`` to another shard (checked again
        after every wait, so no caller mutates a key that is being handed off).
        """
        while True:
            await self._route(key)
            state = self.states.get(key)
            if state is not None:
                self.states.move_to_end(key)
                return state
            loading = self._loading.get(key)
            if loading is None:
                return await self._load(key)
            await asyncio.shield(loading)

    async def _load(self, key: str) -> S:
        future: asyncio.Future[S] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                found = await self.store.load(conn, key)
            if self.ring is not None and not self.ring.owns(key):
                raise KeyMoved(key, self.ring.owner(key), self.ring.spec)
            state = self.new_state(key) if found is None else self.state_from_doc(key, *found)
            self.loads += 1
            self.states[key] = state
            future.set_result(state)
            self._evict()
            return state
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # a failed load with no other waiter must not warn
            raise
        finally:
            del self._loading[key]

    def _evict(self) -> None:
        """Drop the least recently used keys over ``shard_max_keys``: never a dirty one (not
        written yet) nor a pinned one (work under way on it), so the map may stay over."""
        excess = len(self.states) - self.settings.shard_max_keys
        if excess <= 0:
            return
        for key in list(self.states):
            if excess <= 0:
                break
            if not self.flusher.tracker.is_dirty(key) and not self._pinned(key):
                del self.states[key]
                self.evictions += 1
                excess -= 1

    def _pinned(self, key: str) -> bool:
        """Whether ``key`` must stay resident though clean: a kind with work of its own on a
        key (a running order saga) keeps it, since that work changes the resident state and
        the flusher writes only resident keys. Nothing is pinned in a cache of documents."""
        return False

    def changed(self, key: str, state: S, events: list[Envelope]) -> None:
        # Inside a sampled trace the events carry it to the consumers (else unchanged).
        self.flusher.mark(key, state.version, stamp(events))

    async def traced(self, carrier: dict[str, str], method: str, *args: Any) -> Any:
        """``method(*args)`` as a child span of the caller's trace (``actors.clients._call``).

        Ray carries no OpenTelemetry context, so a traced caller sends its W3C
        carrier here; an untraced one calls the method directly. Only the
        public protocol is reachable, as through the handle itself.
        """
        target = _protocol(self, method)
        label = self.name.split(":")[1] if self.name.count(":") == 2 else type(self).__name__
        with span(
            f"{label}.{method}",
            kind=SpanKind.SERVER,
            parent=extract(carrier),
            attributes={"agora.shard": self.name, "rpc.system": "ray", "rpc.method": method},
        ):
            return await _dispatch(target, args)

    async def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` for a routed key (``actors.clients``): a key this shard no
        longer owns answers ``Rejected("moved")`` with the ring to follow."""
        return await _dispatch(_protocol(self, method), args)

    async def adopt_ring(self, epoch: int, shards: int, previous: int | None) -> dict[str, Any]:
        """Follow ring ``epoch`` (``agora scale``): keys it gives away are refused at once,
        flushed, then dropped; keys it gains wait until the handoff ends (``previous`` None).

        Answers once every key given away has committed: then its new owner may load it.
        """
        if not self._follows_ring():
            raise RuntimeError(f"{self.kind} shards do not move keys live")
        await self._get_pool()
        assert self.ring is not None
        started = self.clock()
        spec = RingSpec(self.kind, epoch, shards, previous)
        if epoch < self.ring.spec.epoch:
            return {"name": self.name, "epoch": self.ring.spec.epoch, "stale": True}
        self._set_ring(spec)
        await self._hand_over()
        leaving = [key for key in self.states if not self.ring.owns(key)]
        waits = [self.flusher.durable(key, self.states[key].version) for key in leaving]
        results = await asyncio.gather(*waits, return_exceptions=True)
        kept = 0
        for key, result in zip(leaving, results, strict=True):
            # A quarantined row PostgreSQL refuses stays parked here (never lost, never served).
            if isinstance(result, BaseException):
                kept += 1
            elif not self.ring.owns(key):
                self.states.pop(key, None)
        self.moved_out += len(leaving) - kept
        self.handoffs += 1
        return {
            "name": self.name,
            "epoch": epoch,
            "moved_out": len(leaving) - kept,
            "kept_quarantined": kept,
            "resident": len(self.states),
            "took_ms": self.clock() - started,
        }

    async def _hand_over(self) -> None:
        """Called by ``adopt_ring`` once the new ring is followed (the keys it gives away are
        refused from then on) and before they are flushed: a kind that works on its keys in
        the background (order sagas) stops that work here and returns once it has ended, its
        last change marked. Nothing to stop for a cache of documents."""

    async def durable(self, key: str) -> None:
        """Wait until the current version of ``key`` has committed (group commit)."""
        state = await self.state(key)
        await self.flusher.durable(key, state.version)

    async def drain(self) -> int:
        """Final flush before a graceful stop."""
        if self._pool is None:
            return 0
        return await self.flusher.drain()

    async def stats(self) -> dict[str, Any]:
        """Metrics: resident keys, loads, evictions, flush lag and batch sizes."""
        return {
            "name": self.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "resident": len(self.states),
            "loads": self.loads,
            "evictions": self.evictions,
            **({} if self.ring is None else self._ring_stats()),
            **self.flusher.stats(),
        }

    def _ring_stats(self) -> dict[str, Any]:
        assert self.ring is not None
        spec = self.ring.spec
        return {
            "ring_epoch": spec.epoch,
            "ring_shards": spec.shards,
            "handing_off": spec.handing_off,
            "moved_out": self.moved_out,
            "handoffs": self.handoffs,
        }

    async def ping(self) -> str:
        """Liveness probe; also opens the database pool so the flusher runs."""
        await self._get_pool()
        return self.name
