"""A Ray actor that runs one ``IdempotentConsumer`` forever (restarted with the actor).

Used for consumers with no side loop of their own (the audit log). The
consumer object is built by the caller (``cluster/cli.py``) and shipped to the
actor, so ``streams`` needs nothing of ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import asyncpg
import ray

from streams.consumer import IdempotentConsumer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostConfig:
    database_url: str
    pulsar_url: str


class ConsumerHost:
    def __init__(self, config: HostConfig, consumer: IdempotentConsumer) -> None:
        self._config = config
        self._consumer = consumer
        self._pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            self._ensure_running()

    async def start(self) -> dict[str, Any]:
        self._ensure_running()
        return await self.health()

    async def health(self) -> dict[str, Any]:
        self._ensure_running()
        return {
            "consumer": self._consumer.name,
            "running": self._task is not None and not self._task.done(),
            "last_error": self._last_error,
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ensure_running(self) -> None:
        if self._stop.is_set() or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._consumer.name)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        dsn=self._config.database_url, min_size=1, max_size=2
                    )
                await self._consumer.run(self._pool, self._config.pulsar_url, self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s", self._consumer.name, self._last_error)
                await asyncio.sleep(1)


ConsumerHostActor = ray.remote(max_restarts=-1, max_task_retries=0)(ConsumerHost)


def consumer_actor_name(consumer: str, index: int = 0) -> str:
    return f"agora:{consumer}:{index}"


def get_or_create_consumer(
    namespace: str, config: HostConfig, consumer: IdempotentConsumer, index: int = 0
) -> Any:
    """The detached host of ``consumer`` number ``index``, created if missing, started."""
    handle: Any = ConsumerHostActor.options(  # type: ignore[attr-defined]
        name=consumer_actor_name(consumer.name, index),
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(config, consumer)
    handle.start.remote()
    return handle
