"""The outbox relay survives a kill mid-batch; idempotent consumers apply each event once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import asyncpg
import pulsar
import pytest
import ray

from streams.consumer import IdempotentConsumer, dead_letter_topic
from streams.events import CART_ITEM_ADDED, Envelope, encode, make_event
from streams.outbox import RelayConfig, get_or_create_relay, pulsar_logger
from tests.conftest import eventually

pytestmark = pytest.mark.integration

EVENTS = 3000


class RecordingConsumer(IdempotentConsumer):
    """Remembers every delivery and every applied event; refuses payloads marked ``fail``."""

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        super().__init__(name, topics)
        self.deliveries = 0
        self.applied: list[str] = []

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        self.deliveries += 1
        return await super().handle(pool, envelope)

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        if envelope.payload.get("fail"):
            raise ValueError("refused by the test")
        self.applied.append(envelope.id)


@pytest.fixture
async def pool(db_url: str):
    pool = await asyncpg.create_pool(dsn=db_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def _unique() -> str:
    return uuid.uuid4().hex[:12]


def _topic(run: str) -> str:
    return f"persistent://agora/events/test-outbox-{run}"


async def _enqueue(pool: asyncpg.Pool, topic: str, envelopes: Sequence[Envelope]) -> None:
    await pool.executemany(
        "INSERT INTO outbox (event_id, topic, key, type, envelope) VALUES ($1, $2, $3, $4, $5)",
        [(e.id, topic, e.key, e.type, encode(e).decode()) for e in envelopes],
    )


async def _sent(pool: asyncpg.Pool, topic: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL", topic
    )


async def _relay_health(relay) -> dict | None:
    try:
        return await asyncio.wait_for(relay.health.remote(), timeout=5)
    except (ray.exceptions.RayActorError, TimeoutError):
        return None


async def test_relay_killed_mid_batch_publishes_all_and_each_event_is_applied_once(
    pool: asyncpg.Pool, db_url: str, pulsar_url: str, ray_ns: str
):
    run = _unique()
    topic = _topic(run)
    now_ms = int(time.time() * 1000)
    events = [
        make_event(CART_ITEM_ADDED, f"cart-{run}-{i % 64}", {"i": i}, now_ms + i)
        for i in range(EVENTS)
    ]
    await _enqueue(pool, topic, events)

    consumer = RecordingConsumer(f"test-outbox-{run}", [topic])
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(pool, pulsar_url, stop))
    # Small batches so the kill lands between claiming and committing a batch.
    config = RelayConfig(db_url, pulsar_url, poll_ms=20, batch_size=20)
    relay = get_or_create_relay(ray_ns, config, f"agora:outbox:test-{run}")
    try:
        before = await relay.start.remote()
        assert before["running"]

        async def some_sent() -> bool:
            return await _sent(pool, topic) > 0

        await eventually(some_sent, timeout=30, interval=0.005)
        # The production relay (`agora up`) may share this database and publish some of
        # these rows too; SKIP LOCKED keeps that correct, so the assertions below hold
        # whichever relay published, though the kill then interrupts less of the work.
        ray.kill(relay, no_restart=False)

        async def restarted() -> bool:
            health = await _relay_health(relay)
            return health is not None and health["running"] and health["pid"] != before["pid"]

        await eventually(restarted, timeout=60, interval=0.2)

        async def all_sent() -> bool:
            return await _sent(pool, topic) == EVENTS

        await eventually(all_sent, timeout=120, interval=0.05)

        # Every copy of every event is on the topic before the marker: wait for the marker.
        marker = make_event(CART_ITEM_ADDED, f"cart-{run}-marker", {}, now_ms + EVENTS)
        await _enqueue(pool, topic, [marker])

        async def marker_applied() -> bool:
            return marker.id in consumer.applied

        await eventually(marker_applied, timeout=120, interval=0.05)
    finally:
        stop.set()
        await consuming
        ray.kill(relay, no_restart=True)

    applied = [event_id for event_id in consumer.applied if event_id != marker.id]
    assert len(applied) == EVENTS
    assert set(applied) == {e.id for e in events}
    assert consumer.deliveries >= EVENTS + 1
    recorded = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1", consumer.name
    )
    assert recorded == EVENTS + 1


async def test_handle_applies_an_event_once(pool: asyncpg.Pool):
    consumer = RecordingConsumer(f"test-handle-{_unique()}", [_topic(_unique())])
    envelope = make_event(CART_ITEM_ADDED, "cart-1", {"sku": "A"}, int(time.time() * 1000))

    assert await consumer.handle(pool, envelope) is True
    assert await consumer.handle(pool, envelope) is False
    assert consumer.applied == [envelope.id]
    recorded = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
        consumer.name,
        envelope.id,
    )
    assert recorded == 1


async def test_a_failed_apply_leaves_the_event_unprocessed(pool: asyncpg.Pool):
    consumer = RecordingConsumer(f"test-handle-{_unique()}", [_topic(_unique())])
    envelope = make_event(CART_ITEM_ADDED, "cart-1", {"fail": True}, int(time.time() * 1000))

    with pytest.raises(ValueError):
        await consumer.handle(pool, envelope)
    recorded = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1", consumer.name
    )
    assert recorded == 0


async def test_poison_and_failing_events_are_dead_lettered_without_blocking_their_key(
    pool: asyncpg.Pool, pulsar_url: str
):
    run = _unique()
    topic = _topic(run)
    consumer = RecordingConsumer(f"test-dlq-{run}", [topic])
    consumer.max_attempts = 2
    consumer.retry_backoff_s = 0.01
    key = f"cart-{run}"
    now_ms = int(time.time() * 1000)
    failing = make_event(CART_ITEM_ADDED, key, {"fail": True}, now_ms)
    good = make_event(CART_ITEM_ADDED, key, {"sku": "A"}, now_ms + 1)

    client = pulsar.Client(pulsar_url, logger=pulsar_logger())
    try:
        producer = await asyncio.to_thread(client.create_producer, topic)
        for data in (b"not an envelope", encode(failing), encode(good)):
            await asyncio.to_thread(producer.send, data, partition_key=key)
        stop = asyncio.Event()
        consuming = asyncio.create_task(consumer.run(pool, pulsar_url, stop))

        async def good_applied() -> bool:
            return good.id in consumer.applied

        try:
            await eventually(good_applied, timeout=30)
        finally:
            stop.set()
            await consuming

        inspector = await asyncio.to_thread(
            client.subscribe,
            dead_letter_topic(topic, consumer.name),
            "inspect",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        dead = [await asyncio.to_thread(inspector.receive, 10_000) for _ in range(2)]
    finally:
        await asyncio.to_thread(client.close)

    assert consumer.applied == [good.id]
    reasons = {m.data(): m.properties()["DLQ_REASON"] for m in dead}
    assert set(reasons) == {b"not an envelope", encode(failing)}
    assert reasons[b"not an envelope"].startswith("undecodable")
    assert reasons[encode(failing)].startswith("apply failed 2 times")
    assert all(m.properties()["REAL_TOPIC"] == topic for m in dead)
