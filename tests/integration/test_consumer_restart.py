"""The consumer base drains every key after another consumer of its subscription dies.

pulsar-lite, after a Key_Shared consumer leaves with messages it had not
acknowledged, hands each of their keys to the survivors one message per
subscription and then stops delivering that key (docs/DECISIONS.md, Events
consumers). The base resubscribes when idle; this test kills a prefetching
consumer of the same subscription with SIGKILL and expects every event applied
exactly once by the survivor.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import asyncpg
import pulsar
import pytest

from streams.consumer import IdempotentConsumer
from streams.events import CART_ITEM_ADDED, Envelope, encode, make_event
from streams.outbox import pulsar_logger
from tests.conftest import eventually

pytestmark = pytest.mark.integration

EVENTS = 60
KEYS = 8

_PREFETCHER = """
import sys, time, pulsar
client = pulsar.Client(sys.argv[1])
consumer = client.subscribe(
    sys.argv[2], sys.argv[3],
    consumer_type=pulsar.ConsumerType.KeyShared,
    initial_position=pulsar.InitialPosition.Earliest,
)
consumer.receive(10_000)  # the rest of the topic sits in its receiver queue, unacknowledged
time.sleep(1)  # let the client read its socket dry: a kill then closes it with FIN, not RST
print("ready", flush=True)
sys.stdin.read()
"""


class RecordingConsumer(IdempotentConsumer):
    resubscribe_idle_s = 1.0

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        super().__init__(name, topics)
        self.applied: list[str] = []

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        self.applied.append(envelope.id)


@pytest.fixture
async def pool(db_url: str):
    pool = await asyncpg.create_pool(dsn=db_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_a_consumer_killed_with_unacked_messages_stalls_no_key(
    pool: asyncpg.Pool, pulsar_url: str
):
    run = uuid.uuid4().hex[:12]
    topic = f"persistent://agora/events/test-restart-{run}"
    name = f"test-restart-{run}"
    now_ms = int(time.time() * 1000)
    events = [
        make_event(CART_ITEM_ADDED, f"cart-{run}-{i % KEYS}", {"i": i}, now_ms + i)
        for i in range(EVENTS)
    ]
    client = pulsar.Client(pulsar_url, logger=pulsar_logger())
    try:
        producer = client.create_producer(topic, batching_enabled=False)
        for event in events:
            producer.send(encode(event), partition_key=event.key)
        producer.close()
    finally:
        client.close()

    prefetcher = subprocess.Popen(
        [sys.executable, "-c", _PREFETCHER, pulsar_url, topic, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert prefetcher.stdout is not None
        # The client logs on stdout too: wait for our line (EOF means it failed).
        while True:
            line = await asyncio.get_running_loop().run_in_executor(
                None, prefetcher.stdout.readline
            )
            assert line, "the prefetching consumer exited"
            if line.strip() == b"ready":
                break
    finally:
        prefetcher.kill()  # SIGKILL: no close, the broker sees the connection drop
        prefetcher.wait()

    consumer = RecordingConsumer(name, [topic])
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(pool, pulsar_url, stop))
    try:

        async def all_applied() -> bool:
            return len(set(consumer.applied)) == EVENTS

        await eventually(all_applied, timeout=60, interval=0.2)
    finally:
        stop.set()
        await consuming
    assert sorted(consumer.applied) == sorted(e.id for e in events)
