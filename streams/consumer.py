"""The base of every idempotent Pulsar consumer: dedupe, retries and the dead-letter topic.

A consumer records each event id it applies in ``processed_events``, in the
same transaction as its effect, so a redelivered event is recognised and
skipped. Messages arrive through a ``Key_Shared`` subscription, so one key is
handled by one consumer at a time, in order, while consumers scale out.

Failure policy. A transient failure (the database or the network is away)
is retried in place, with capped backoff, for as long as it lasts: an outage
pauses consumption and loses nothing. Any other failure to apply is retried
in place, with backoff, up to ``max_attempts`` times; a message that cannot
be decoded is not retried. Either of those is then published to the
dead-letter topic ``<topic>-<subscription>-DLQ`` (properties ``REAL_TOPIC``,
``ORIGIN_MESSAGE_ID``, ``DLQ_REASON``), recorded in ``dead_letters`` (what
``/metrics`` counts as ``agora_events_dead_lettered{consumer}``; best effort) and
acknowledged, so a poison message never loops and never holds up the later
events of its key. Retrying in
place rather than by negative acknowledgement keeps per-key order, and it
matters on pulsar-lite, which never redelivers a message nacked twice on a
``Key_Shared`` subscription and from then on stops delivering its key.
Only when the dead-letter publish itself fails is the message negatively
acknowledged; the subscription's dead-letter policy then takes over on a
broker that honours it.

Batches. A consumer with ``batch_max > 1`` takes the messages that are
already in its receive queue (never waiting for more) with the one it was
waiting for, up to ``batch_max``, and applies them in one transaction: one
multi-row claim in ``processed_events``, each new event's effect in arrival
order, one commit, then the acknowledgements. Under load that is one commit
and one connection checkout per batch instead of per event; when idle a batch
is one message, as before. Any failure in a batch (a poison message, the
database away) rolls the whole batch back and its messages go through the
one-at-a-time path above, with its retries and dead-letter topic, so a batch
changes when events are committed, never whether or how often they apply.

Receive queue. Each subscription is opened with a receive queue of
``receiver_queue_size`` messages (100) instead of the client's 1000: the
flow-control permits, how far the broker may push messages ahead of what we
have taken. On pulsar-lite 0.2 a Key_Shared subscription given a burst of
many distinct keys at once (the relay publishing a backlog) delivers nothing
for seconds with 1000 permits (500 keys: ~3 s; 1000 keys: 3 to 13 s) and
almost at once with 100 (1000 keys: <0.1 s); docs/DECISIONS.md, "Mail latency
and the consumer stall".

Two pulsar-lite faults are worked around here, on one client (so each new
subscribe gets a new consumer id from the client's counter). A consumer
killed without closing can stay registered in the Key_Shared dispatcher, and
a restarted process's first consumer (id 0 again) is refused as "already
exists": the subscribe is retried in place, with backoff, and the next id is
accepted. And after any consumer leaves the subscription with messages it
had not acknowledged, the broker hands each of their keys to the survivors
one message per subscription and then stops delivering that key: so a
consumer idle for ``resubscribe_idle_s`` closes and subscribes again, which
releases the stalled keys (redeliveries are deduplicated by event id).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from functools import partial

import asyncpg
import msgspec
import pulsar
from opentelemetry.trace import SpanKind, Status, StatusCode

from streams import tracing
from streams.events import Envelope, decode
from streams.outbox import pulsar_logger

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT_MS = 200
MAX_TRANSIENT_BACKOFF_S = 5.0
DEAD_LETTER_RECORD_TIMEOUT_S = 5.0

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)

_CLAIM_EVENT = """
INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING 1
"""
_CLAIM_EVENTS = """
INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[])
ON CONFLICT DO NOTHING
RETURNING event_id
"""
_PARTITION_SUFFIX = re.compile(r"-partition-\d+$")


def dead_letter_topic(topic: str, subscription: str) -> str:
    """Where ``subscription`` parks the messages of ``topic`` it could not apply."""
    return f"{_PARTITION_SUFFIX.sub('', topic)}-{subscription}-DLQ"


class IdempotentConsumer(abc.ABC):
    """Applies each event at most once per ``name``; subclasses implement ``apply``."""

    name: str
    topics: Sequence[str]
    max_attempts: int = 5
    # Flow-control permits: messages the broker may push ahead of our receives (client: 1000).
    receiver_queue_size: int = 100
    # Messages applied in one transaction at most (1: one transaction each); see the module doc.
    batch_max: int = 1
    retry_backoff_s: float = 0.1
    max_redeliver_count: int = 5
    negative_ack_redelivery_delay_ms: int = 1000
    # Resubscribe after this long without a message (0 = never); see the module doc.
    resubscribe_idle_s: float = 5.0
    subscribe_backoff_s: float = 0.2
    # A refused subscribe blocks until this timeout (the client retries it with the same id).
    operation_timeout_s: int = 5

    def __init__(self, name: str | None = None, topics: Sequence[str] | None = None) -> None:
        if name is not None:
            self.name = name
        if topics is not None:
            self.topics = list(topics)
        if not getattr(self, "name", None) or not getattr(self, "topics", None):
            raise ValueError(f"{type(self).__name__} needs a name and at least one topic")

    def is_transient(self, exc: Exception) -> bool:
        """Whether ``exc`` says "try again later" rather than "this event cannot be applied"."""
        return isinstance(exc, _TRANSIENT_ERRORS)

    @abc.abstractmethod
    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        """The effect of one event, inside the transaction that records it as processed."""

    async def tick(self, pool: asyncpg.Pool) -> None:
        """Called after each message and each idle receive timeout; periodic work goes here.

        A failure is logged and does not stop consumption. Nothing by default.
        """
        del pool

    async def _tick(self, pool: asyncpg.Pool) -> None:
        try:
            await self.tick(pool)
        except Exception as exc:
            log.warning("%s: tick failed: %s", self.name, _describe(exc))

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        """Apply ``envelope`` unless it was applied before; True when it was applied now."""
        async with pool.acquire() as conn, conn.transaction():
            tracing.instrument_connection(conn)  # once per connection (a set of loggers)
            if await conn.fetchval(_CLAIM_EVENT, self.name, envelope.id) is None:
                return False
            await self.apply(conn, envelope)
            return True

    async def handle_batch(self, pool: asyncpg.Pool, envelopes: Sequence[Envelope]) -> int:
        """Apply every envelope not applied before, in order, in one transaction; how many.

        Raises (and commits nothing) when any of them fails; the caller then
        takes them one at a time.
        """
        ids = [uuid.UUID(envelope.id) for envelope in envelopes]  # ValueError: not a UUID
        async with pool.acquire() as conn, conn.transaction():
            tracing.instrument_connection(conn)
            fresh = {row["event_id"] for row in await conn.fetch(_CLAIM_EVENTS, self.name, ids)}
            applied = 0
            for event_id, envelope in zip(ids, envelopes, strict=True):
                if event_id not in fresh:
                    continue  # applied before, or earlier in this batch (a redelivery)
                fresh.discard(event_id)
                parent = tracing.event_context(envelope)
                if parent is None:
                    await self.apply(conn, envelope)
                else:
                    with tracing.span(
                        f"{self.name} consume {envelope.type}",
                        kind=SpanKind.CONSUMER,
                        parent=parent,
                        attributes=_span_attributes(self.name, envelope),
                    ):
                        await self.apply(conn, envelope)
                applied += 1
            return applied

    async def run(
        self,
        pool: asyncpg.Pool,
        pulsar_url: str,
        stop_event: asyncio.Event,
        *,
        subscription_initial_position: pulsar.InitialPosition = pulsar.InitialPosition.Earliest,
    ) -> None:
        """Consume the topics until ``stop_event`` is set."""
        tracing.setup(tracing.TracingConfig.from_env(), f"agora-consumer-{self.name}")
        loop = asyncio.get_running_loop()
        client = pulsar.Client(
            pulsar_url,
            logger=pulsar_logger(),
            operation_timeout_seconds=self.operation_timeout_s,
        )
        dead_letters: dict[str, pulsar.Producer] = {}
        consumer: pulsar.Consumer | None = None
        try:
            subscribe = partial(
                client.subscribe,
                self.topics[0] if len(self.topics) == 1 else list(self.topics),
                self.name,
                consumer_type=pulsar.ConsumerType.KeyShared,
                initial_position=subscription_initial_position,
                receiver_queue_size=self.receiver_queue_size,
                negative_ack_redelivery_delay_ms=self.negative_ack_redelivery_delay_ms,
                dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
                    max_redeliver_count=self.max_redeliver_count,
                    # For a multi-topic consumer the client's default is that name per topic.
                    dead_letter_topic=(
                        dead_letter_topic(self.topics[0], self.name)
                        if len(self.topics) == 1
                        else None
                    ),
                ),
            )
            consumer = await self._subscribe(subscribe, stop_event)
            last_message = loop.time()
            while consumer is not None and not stop_event.is_set():
                try:
                    message = await loop.run_in_executor(None, consumer.receive, RECEIVE_TIMEOUT_MS)
                except pulsar.Timeout:
                    await self._tick(pool)
                    idle = loop.time() - last_message
                    if self.resubscribe_idle_s > 0 and idle >= self.resubscribe_idle_s:
                        closing, consumer = consumer, None
                        await loop.run_in_executor(None, closing.close)
                        consumer = await self._subscribe(subscribe, stop_event)
                        last_message = loop.time()
                    continue
                last_message = loop.time()
                batch = [message, *_already_received(consumer, self.batch_max - 1)]
                await self._process_batch(pool, client, consumer, batch, dead_letters, stop_event)
                await self._tick(pool)
        finally:
            for producer in dead_letters.values():
                await loop.run_in_executor(None, producer.close)
            if consumer is not None:
                await loop.run_in_executor(None, consumer.close)
            await loop.run_in_executor(None, client.close)

    async def _subscribe(
        self, subscribe: Callable[[], pulsar.Consumer], stop_event: asyncio.Event
    ) -> pulsar.Consumer | None:
        """Subscribe on the same client until accepted (each try takes a new consumer id).

        None when ``stop_event`` is set first.
        """
        loop = asyncio.get_running_loop()
        attempt = 0
        while not stop_event.is_set():
            try:
                return await loop.run_in_executor(None, subscribe)
            except pulsar.PulsarException as exc:
                attempt += 1
                log.warning("%s: subscribe refused (try %d): %s", self.name, attempt, exc)
                delay = self.subscribe_backoff_s * 2 ** min(attempt - 1, 10)
                await asyncio.sleep(min(delay, MAX_TRANSIENT_BACKOFF_S))
        return None

    async def _process_batch(
        self,
        pool: asyncpg.Pool,
        client: pulsar.Client,
        consumer: pulsar.Consumer,
        messages: Sequence[pulsar.Message],
        dead_letters: dict[str, pulsar.Producer],
        stop_event: asyncio.Event,
    ) -> None:
        """One transaction for ``messages``; on any failure, each through ``_process``."""
        if len(messages) > 1:
            try:
                await self.handle_batch(pool, [decode(m.data()) for m in messages])
            except Exception as exc:
                log.info(
                    "%s: a batch of %d failed (%s); one at a time",
                    self.name,
                    len(messages),
                    _describe(exc),
                )
            else:
                for message in messages:
                    consumer.acknowledge(message)
                return
        for message in messages:
            if stop_event.is_set():
                return  # unacknowledged, they go back to the subscription when we close
            await self._process(pool, client, consumer, message, dead_letters, stop_event)

    async def _process(
        self,
        pool: asyncpg.Pool,
        client: pulsar.Client,
        consumer: pulsar.Consumer,
        message: pulsar.Message,
        dead_letters: dict[str, pulsar.Producer],
        stop_event: asyncio.Event,
    ) -> None:
        try:
            envelope = decode(message.data())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("%s: undecodable message on %s", self.name, message.topic_name())
            reason = f"undecodable: {exc}"
        else:
            failure = await self._apply_traced(pool, envelope, stop_event)
            if failure is None:
                consumer.acknowledge(message)
                return
            if stop_event.is_set():
                # Unacknowledged, it goes back to the subscription when we close.
                return
            reason = failure
        try:
            await self._dead_letter(client, message, reason, dead_letters)
        except Exception:
            log.exception("%s: dead-lettering failed; negatively acknowledging", self.name)
            consumer.negative_acknowledge(message)
            return
        await self._record_dead_letter(pool, message, reason)
        consumer.acknowledge(message)

    async def _record_dead_letter(
        self, pool: asyncpg.Pool, message: pulsar.Message, reason: str
    ) -> None:
        """A ``dead_letters`` row for /metrics; best effort, never holds up the partition."""
        properties = message.properties()
        try:
            event_id: str | None = decode(message.data()).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            event_id = properties.get("event_id")
        try:
            await asyncio.wait_for(
                pool.execute(
                    "INSERT INTO dead_letters (consumer, topic, event_id, event_type, reason)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    self.name,
                    message.topic_name(),
                    event_id,
                    properties.get("type"),
                    reason[:1000],
                ),
                DEAD_LETTER_RECORD_TIMEOUT_S,
            )
        except Exception as exc:
            log.warning("%s: dead letter not recorded: %s", self.name, _describe(exc))

    async def _apply_traced(
        self, pool: asyncpg.Pool, envelope: Envelope, stop_event: asyncio.Event
    ) -> str | None:
        """``_apply_with_retries`` in a span continuing the producer's trace, if it had one."""
        parent = tracing.event_context(envelope)
        if parent is None:
            return await self._apply_with_retries(pool, envelope, stop_event)
        with tracing.span(
            f"{self.name} consume {envelope.type}",
            kind=SpanKind.CONSUMER,
            parent=parent,
            attributes=_span_attributes(self.name, envelope),
        ) as current:
            failure = await self._apply_with_retries(pool, envelope, stop_event)
            if failure is not None:
                current.set_status(Status(StatusCode.ERROR, failure[:200]))
            return failure

    async def _apply_with_retries(
        self, pool: asyncpg.Pool, envelope: Envelope, stop_event: asyncio.Event
    ) -> str | None:
        """None once handled; otherwise why the event was given up on."""
        attempt, outage = 1, 0
        while True:
            try:
                await self.handle(pool, envelope)
                return None
            except Exception as exc:
                failure = _describe(exc)
                if stop_event.is_set():
                    return f"stopped while retrying: {failure}"
                if self.is_transient(exc):
                    outage += 1
                    log.warning("%s: transient failure, retrying: %s", self.name, failure)
                    delay = self.retry_backoff_s * 2 ** min(outage - 1, 10)
                    await asyncio.sleep(min(delay, MAX_TRANSIENT_BACKOFF_S))
                    continue
                log.warning("%s: %s attempt %d: %s", self.name, envelope.id, attempt, failure)
                if attempt >= self.max_attempts:
                    return f"apply failed {attempt} times: {failure}"
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
                attempt += 1

    async def _dead_letter(
        self,
        client: pulsar.Client,
        message: pulsar.Message,
        reason: str,
        dead_letters: dict[str, pulsar.Producer],
    ) -> None:
        loop = asyncio.get_running_loop()
        topic = dead_letter_topic(message.topic_name(), self.name)
        if topic not in dead_letters:
            dead_letters[topic] = await loop.run_in_executor(None, client.create_producer, topic)
        producer = dead_letters[topic]
        properties = {
            **message.properties(),
            "REAL_TOPIC": message.topic_name(),
            "ORIGIN_MESSAGE_ID": str(message.message_id()),
            "DLQ_REASON": reason[:1000],
        }
        send = partial(
            producer.send,
            message.data(),
            properties=properties,
            partition_key=message.partition_key() or None,
        )
        await loop.run_in_executor(None, send)


def _already_received(consumer: pulsar.Consumer, limit: int) -> list[pulsar.Message]:
    """Up to ``limit`` messages already in the client's receive queue, without waiting."""
    found: list[pulsar.Message] = []
    while len(found) < limit:
        try:
            found.append(consumer.receive(0))
        except pulsar.Timeout:
            break
    return found


def _span_attributes(name: str, envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.system": "pulsar",
        "messaging.consumer.group.name": name,
        "messaging.message.id": envelope.id,
        "agora.event.type": envelope.type,
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
