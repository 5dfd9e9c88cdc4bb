"""The shell shared by every shard actor kind: lazy loading, LRU eviction, write-behind.

A kind supplies how to turn a stored document into its state and back; the
shell owns the in-memory map of keys, the flusher, the durable path, drain and
stats. Everything outside the process is injected as a ``ShardEnv`` (settings,
the kind's store, how to open the database pool, the clock, the kind's ports),
built by ``cluster.bootstrap``: a shell runs in a unit test with an in-memory
store and a fake clock, and actors never import the wiring.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import ray
from opentelemetry.trace import SpanKind

from actors.messages import now_ms
from actors.writebehind import DirtyTracker, Flusher, Store
from streams.events import Envelope
from streams.tracing import extract, span, stamp


class Document(Protocol):
    version: int

    def to_doc(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Document)


@dataclass(frozen=True)
class ShardEnv:
    """What a shard needs from outside, injected when the directory creates it.

    ``settings`` is read by attribute (flush, eviction and kind rules);
    ``open_pool`` opens the database pool once; ``ports`` are the kind's own
    (the order saga's ``Ports``); ``directory`` routes calls to other shards.
    """

    settings: Any
    store: Store
    open_pool: Callable[[], Awaitable[Any]]
    clock: Callable[[], int] = now_ms
    ports: Any = None
    directory: Any = None


EnvFactory = Callable[[str], ShardEnv]


class ShardShell(ABC, Generic[S]):
    """Owns many states of one kind; subclasses add the protocol methods."""

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
                    self._pool = await self.env.open_pool()
                    self.flusher.start()
        return self._pool

    def _acquire(self) -> Any:
        return self._pool.acquire()

    def _snapshot(self, key: str) -> tuple[Any, int] | None:
        state = self.states.get(key)
        return None if state is None else (state.to_doc(), state.version)

    async def state(self, key: str) -> S:
        """The state of ``key``, loaded from PostgreSQL on first use after a (re)start."""
        state = self.states.get(key)
        if state is not None:
            self.states.move_to_end(key)
            return state
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[S] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                found = await self.store.load(conn, key)
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
        excess = len(self.states) - self.settings.shard_max_keys
        if excess <= 0:
            return
        for key in list(self.states):
            if excess <= 0:
                break
            if not self.flusher.tracker.is_dirty(key):
                del self.states[key]
                self.evictions += 1
                excess -= 1

    def changed(self, key: str, state: S, events: list[Envelope]) -> None:
        # Inside a sampled trace the events carry it to the consumers (else unchanged).
        self.flusher.mark(key, state.version, stamp(events))

    async def traced(self, carrier: dict[str, str], method: str, *args: Any) -> Any:
        """``method(*args)`` as a child span of the caller's trace (``actors.clients._call``).

        Ray carries no OpenTelemetry context, so a traced caller sends its W3C
        carrier here; an untraced one calls the method directly. Only the
        public protocol is reachable, as through the handle itself.
        """
        target = None if method.startswith("_") else getattr(self, method, None)
        if not callable(target) or method == "traced":
            raise AttributeError(f"{type(self).__name__} has no method {method!r}")
        label = self.name.split(":")[1] if self.name.count(":") == 2 else type(self).__name__
        with span(
            f"{label}.{method}",
            kind=SpanKind.SERVER,
            parent=extract(carrier),
            attributes={"agora.shard": self.name, "rpc.system": "ray", "rpc.method": method},
        ):
            result = target(*args)
            return await result if inspect.isawaitable(result) else result

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
            **self.flusher.stats(),
        }

    async def ping(self) -> str:
        """Liveness probe; also opens the database pool so the flusher runs."""
        await self._get_pool()
        return self.name
