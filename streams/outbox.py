"""The outbox relay: publishes committed ``outbox`` rows to Pulsar and marks them sent.

Rows reach the ``outbox`` table in the same transaction as the state change
that produced them. The relay claims unsent rows in ``seq`` order with
``FOR UPDATE SKIP LOCKED``, publishes them (message key = aggregate id,
payload = the envelope JSON) and marks them sent in the same transaction.
Delivery is at-least-once: a crash after publishing and before the commit
publishes those rows again, and consumers dedupe by event id.

One relay (``agora:outbox:0``) keeps per-key order. Several relays on the
same table are safe (no row is lost or claimed twice at once) but can
interleave the batches of one key.

The relay imports nothing of ours but ``streams``: whoever starts it (the
``agora`` command line) passes the database and broker addresses and the
batching knobs in a ``RelayConfig``. Topics are already in the rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import msgspec
import pulsar
import ray
from opentelemetry.trace import SpanKind

from streams import tracing
from streams.events import Envelope

log = logging.getLogger(__name__)

ProducerFor = Callable[[str], Awaitable[pulsar.Producer]]

SEND_TIMEOUT_MS = 10_000
MAX_BACKOFF_S = 1.0
START_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = SEND_TIMEOUT_MS / 1000 + 5

_CLAIM = """
SELECT seq, event_id, topic, key, type, envelope, created_at
FROM outbox
WHERE sent_at IS NULL
ORDER BY seq
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
_MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE seq = ANY($1::bigint[])"
_COUNT_PENDING = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"


@dataclass(frozen=True)
class RelayConfig:
    """Where the relay reads (PostgreSQL) and writes (Pulsar), and how it batches."""

    database_url: str
    pulsar_url: str
    poll_ms: int = 50
    batch_size: int = 500


class OutboxPublishError(RuntimeError):
    """Some claimed rows were not published; the others were sent and marked."""

    def __init__(self, sent: int, failed: int, cause: str) -> None:
        super().__init__(f"{failed} outbox rows not published ({sent} sent): {cause}")
        self.sent = sent
        self.failed = failed


def pulsar_logger() -> logging.Logger:
    """The Python logger handed to ``pulsar.Client``: the C++ client is chatty below WARNING."""
    logger = logging.getLogger("pulsar")
    logger.setLevel(logging.WARNING)
    return logger


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _event_time_ms(row: asyncpg.Record) -> int:
    event_id: uuid.UUID = row["event_id"]
    if event_id.version == 7:
        return event_id.int >> 80
    return int(row["created_at"].timestamp() * 1000)


Delivery = asyncio.Future["pulsar.Result | None"]


def _resolver(loop: asyncio.AbstractEventLoop, delivery: Delivery):
    def resolve(result: pulsar.Result | None) -> None:
        if not delivery.done():
            delivery.set_result(result)

    def from_any_thread(result: pulsar.Result | None, _message_id: Any = None) -> None:
        # Pulsar calls this on its I/O thread, where an exception would abort the process.
        try:
            loop.call_soon_threadsafe(resolve, result)
        except RuntimeError:
            pass

    return from_any_thread


def _send_and_flush(
    loop: asyncio.AbstractEventLoop,
    producers: dict[str, pulsar.Producer],
    rows: Sequence[asyncpg.Record],
    deliveries: Sequence[Delivery],
) -> list[str]:
    """Hand every row to its producer and flush; runs off the event loop, which it never blocks."""
    errors: list[str] = []
    for row, delivery in zip(rows, deliveries, strict=True):
        resolve = _resolver(loop, delivery)
        try:
            producers[row["topic"]].send_async(
                row["envelope"].encode(),
                resolve,
                properties={"event_id": str(row["event_id"]), "type": row["type"]},
                partition_key=row["key"],
                event_timestamp=_event_time_ms(row),
            )
        except Exception as exc:
            resolve(None)
            errors.append(f"send: {_describe(exc)}")
    for topic, producer in producers.items():
        try:
            producer.flush()
        except Exception as exc:
            errors.append(f"flush {topic}: {_describe(exc)}")
    return errors


async def publish_pending(pool: asyncpg.Pool, producer_for: ProducerFor, batch_size: int) -> int:
    """Publish one batch of unsent rows and mark the published ones sent; return how many.

    Raises ``OutboxPublishError`` after committing when some rows could not be
    published; those stay unsent and are retried by the next call.
    """
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_CLAIM, batch_size)
        if not rows:
            return 0
        started_ns = time.time_ns()
        producers: dict[str, pulsar.Producer] = {}
        for topic in sorted({row["topic"] for row in rows}):
            try:
                producers[topic] = await producer_for(topic)
            except Exception as exc:
                errors.append(f"producer for {topic}: {_describe(exc)}")
        outgoing = [row for row in rows if row["topic"] in producers]
        deliveries: list[Delivery] = [loop.create_future() for _ in outgoing]
        errors += await loop.run_in_executor(
            None, _send_and_flush, loop, producers, outgoing, deliveries
        )
        results = await asyncio.wait_for(
            asyncio.gather(*deliveries), timeout=SEND_TIMEOUT_MS / 1000 + 5
        )
        ok = pulsar.Result.Ok
        sent = [row["seq"] for row, result in zip(outgoing, results, strict=True) if result == ok]
        refused = {str(result) for result in results if result not in (ok, None)}
        if refused:
            errors.append(f"broker refused: {', '.join(sorted(refused))}")
        if sent:
            await conn.execute(_MARK_SENT, sent)
    if tracing.enabled():
        _trace_published(outgoing, results, started_ns)
    if errors:
        raise OutboxPublishError(len(sent), len(rows) - len(sent), "; ".join(errors))
    return len(sent)


def _trace_published(
    rows: Sequence[asyncpg.Record], results: Sequence[pulsar.Result | None], started_ns: int
) -> None:
    """A producer span per published traced event, in the trace of the change that made it."""
    ended_ns = time.time_ns()
    for row, result in zip(rows, results, strict=True):
        try:
            envelope = msgspec.json.decode(row["envelope"], type=Envelope)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            continue
        parent = tracing.event_context(envelope)
        if parent is None:
            continue
        tracing.record_span(
            f"outbox publish {envelope.type}",
            parent,
            started_ns,
            ended_ns,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "pulsar",
                "messaging.destination.name": row["topic"],
                "messaging.message.id": envelope.id,
            },
            error=None if result == pulsar.Result.Ok else str(result),
        )


class OutboxRelay:
    """Publishes the outbox forever: one background task, restarted with the actor."""

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self._pool: asyncpg.Pool | None = None
        self._client: pulsar.Client | None = None
        self._producers: dict[str, pulsar.Producer] = {}
        self._connect_lock: asyncio.Lock | None = None
        self._producer_lock: asyncio.Lock | None = None
        # One batch at a time: ``drain`` racing the loop would interleave a key's batches.
        self._publish_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._sent_total = 0
        self._last_error: str | None = None
        if _inside_ray_actor():
            tracing.setup(tracing.TracingConfig.from_env(), "agora-outbox")
            # Ray runs an async actor's __init__ inside its event loop, so a restarted
            # relay resumes publishing before anyone calls it.
            self._ensure_running()

    async def start(self) -> dict[str, Any]:
        """Connect to PostgreSQL and Pulsar, start the publishing loop, return health."""
        self._stopped = False
        self._ensure_running()
        try:
            await asyncio.wait_for(self._connect(), timeout=START_TIMEOUT_S)
        except Exception as exc:
            self._last_error = _describe(exc)
            raise
        return await self.health()

    async def health(self) -> dict[str, Any]:
        """Loop running?, events sent since (re)start, last error, unsent rows (None: unknown)."""
        self._ensure_running()
        pending: int | None = None
        if self._pool is not None:
            try:
                pending = await asyncio.wait_for(
                    self._pool.fetchval(_COUNT_PENDING), timeout=HEALTH_TIMEOUT_S
                )
            except Exception as exc:
                self._last_error = _describe(exc)
        return {
            "running": self._task is not None and not self._task.done(),
            "sent_total": self._sent_total,
            "last_error": self._last_error,
            "pending": pending,
            "pid": os.getpid(),
        }

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Publish until no unsent row is left (or the timeout); return how many this call sent."""
        await self._connect()
        self._ensure_running()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        drained = 0
        while True:
            sent = await self._publish_once()
            drained += sent
            if sent:
                continue
            # Rows still unsent here are claimed by the background loop or another relay.
            if await self._pool.fetchval(_COUNT_PENDING) == 0 or loop.time() >= deadline:
                return drained
            await asyncio.sleep(self._config.poll_ms / 1000)

    async def stop(self) -> None:
        """Stop publishing, flush and close the producers, the Pulsar client and the pool."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=STOP_TIMEOUT_S)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        producers, self._producers = list(self._producers.values()), {}
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        try:
            for producer in producers:
                await loop.run_in_executor(None, producer.flush)
                await loop.run_in_executor(None, producer.close)
        finally:
            if client is not None:
                await loop.run_in_executor(None, client.close)
            if pool is not None:
                await pool.close()

    def _ensure_running(self) -> None:
        if self._stopped or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-relay")

    async def _run(self) -> None:
        backoff = self._config.poll_ms / 1000
        while not self._stopped:
            try:
                await self._connect()
                sent = await self._publish_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = _describe(exc)
                log.warning("outbox relay: %s", self._last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = self._config.poll_ms / 1000
            if not sent:
                await asyncio.sleep(self._config.poll_ms / 1000)

    async def _publish_once(self) -> int:
        assert self._pool is not None
        if self._publish_lock is None:
            self._publish_lock = asyncio.Lock()
        try:
            async with self._publish_lock:
                sent = await publish_pending(
                    self._pool, self._producer_for, self._config.batch_size
                )
        except OutboxPublishError as exc:
            self._sent_total += exc.sent
            raise
        self._sent_total += sent
        self._last_error = None
        return sent

    async def _connect(self) -> None:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    dsn=self._config.database_url, min_size=1, max_size=2
                )
            if self._client is None:
                self._client = pulsar.Client(self._config.pulsar_url, logger=pulsar_logger())

    async def _producer_for(self, topic: str) -> pulsar.Producer:
        producer = self._producers.get(topic)
        if producer is not None:
            return producer
        if self._producer_lock is None:
            self._producer_lock = asyncio.Lock()
        async with self._producer_lock:
            producer = self._producers.get(topic)
            if producer is None:
                assert self._client is not None
                create = partial(
                    self._client.create_producer,
                    topic,
                    send_timeout_millis=SEND_TIMEOUT_MS,
                    max_pending_messages=max(1000, 2 * self._config.batch_size),
                    block_if_queue_full=True,
                    batching_enabled=True,
                    # Key_Shared consumers need batches that hold one key each.
                    batching_type=pulsar.BatchingType.KeyBased,
                    batching_max_publish_delay_ms=5,
                )
                producer = await asyncio.get_running_loop().run_in_executor(None, create)
                self._producers[topic] = producer
            return producer


def _inside_ray_actor() -> bool:
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


OutboxRelayActor = ray.remote(max_restarts=-1, max_task_retries=0)(OutboxRelay)


def relay_actor_name() -> str:
    return "agora:outbox:0"


def get_or_create_relay(namespace: str, config: RelayConfig, name: str | None = None) -> Any:
    """The detached relay actor ``name`` (default: the one relay), created if missing, started.

    ``config`` applies only when the actor is created.
    """
    handle: Any = OutboxRelayActor.options(  # type: ignore[attr-defined]
        name=name or relay_actor_name(),
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(config)
    handle.start.remote()
    return handle
