"""The consumer base's batches: many events in one transaction, each applied once, in key order.

Against the real PostgreSQL and Pulsar of the running system. The events are on
the topic before the consumer subscribes, so its receive queue holds many and
it takes them in batches of ``batch_max``. A poison event in a batch rolls the
batch back; its messages then go one at a time: the poison one to the
dead-letter topic, every other one applied exactly once. The effect of an
event is a row written in the consumer's transaction, so a rolled-back batch
leaves none and a second application would show as a second row.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence

import asyncpg
import pulsar
import pytest

from streams.consumer import IdempotentConsumer, dead_letter_topic
from streams.events import CART_ITEM_ADDED, Envelope, encode, make_event
from streams.outbox import pulsar_logger
from tests.conftest import eventually

pytestmark = pytest.mark.integration

EVENTS = 48
KEYS = 4
POISON = 21  # lands inside a batch, not at its start


class BatchingConsumer(IdempotentConsumer):
    batch_max = 8
    max_attempts = 2
    retry_backoff_s = 0.01
    resubscribe_idle_s = 0.0

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        super().__init__(name, topics)
        self.batch_sizes: list[int] = []
        self._order = itertools.count()

    async def handle_batch(self, pool: asyncpg.Pool, envelopes: Sequence[Envelope]) -> int:
        self.batch_sizes.append(len(envelopes))
        return await super().handle_batch(pool, envelopes)

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        if envelope.payload.get("poison"):
            raise ValueError("poison")
        # The effect: one row per application, named by the order it was applied in.
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)",
            f"{self.name}-effect-{next(self._order):06d}",
            envelope.id,
        )


@pytest.fixture
async def pool(db_url: str):
    pool = await asyncpg.create_pool(dsn=db_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_a_batch_applies_each_event_once_in_key_order_and_parks_the_poison(
    pool: asyncpg.Pool, pulsar_url: str
):
    run = uuid.uuid4().hex[:12]
    topic = f"persistent://agora/events/test-batch-{run}"
    name = f"test-batch-{run}"
    now_ms = int(time.time() * 1000)
    events = [
        make_event(
            CART_ITEM_ADDED, f"cart-{run}-{i % KEYS}", {"i": i, "poison": i == POISON}, now_ms + i
        )
        for i in range(EVENTS)
    ]
    client = pulsar.Client(pulsar_url, logger=pulsar_logger())
    try:
        producer = client.create_producer(topic, batching_enabled=False)
        for event in events:
            producer.send(encode(event), partition_key=event.key)
        producer.send(encode(events[5]), partition_key=events[5].key)  # a redelivery
        producer.close()
        dead = client.subscribe(
            dead_letter_topic(topic, name),
            f"{name}-check",
            initial_position=pulsar.InitialPosition.Earliest,
        )
    except Exception:
        client.close()
        raise

    consumer = BatchingConsumer(name, [topic])
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(pool, pulsar_url, stop))
    good = [e for e in events if not e.payload["poison"]]
    try:

        async def all_applied() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer = $1", name
            )
            return done >= len(good)

        await eventually(all_applied, timeout=60, interval=0.2)
        parked = await asyncio.get_running_loop().run_in_executor(None, dead.receive, 30_000)
        await asyncio.sleep(0.5)  # the duplicate, if it were applied again, would land now
    finally:
        stop.set()
        await consuming
        client.close()
    try:
        effects = await pool.fetch(
            "SELECT consumer, event_id::text AS event_id FROM processed_events"
            " WHERE consumer LIKE $1 ORDER BY consumer",
            f"{name}-effect-%",
        )
        claimed = await pool.fetch(
            "SELECT event_id::text AS event_id FROM processed_events WHERE consumer = $1", name
        )
    finally:
        await pool.execute("DELETE FROM processed_events WHERE consumer LIKE $1", f"{name}%")

    assert max(consumer.batch_sizes) > 1, consumer.batch_sizes  # batches were taken
    applied = [r["event_id"] for r in effects]
    assert sorted(applied) == sorted(e.id for e in good)  # each good event once, poison never
    assert {r["event_id"] for r in claimed} == {e.id for e in good}
    position = {event_id: n for n, event_id in enumerate(applied)}
    for key in range(KEYS):
        ours = [position[e.id] for e in good if e.payload["i"] % KEYS == key]
        assert ours == sorted(ours), f"key {key} applied out of order"
    assert parked.properties()["DLQ_REASON"].startswith("apply failed"), parked.properties()
    assert parked.data() == encode(events[POISON])
