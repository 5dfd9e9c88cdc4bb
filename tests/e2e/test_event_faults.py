"""Bad events on the live system: dead-lettered, counted in /metrics, never blocking their key.

Three messages with one key are published straight onto the ``admin`` topic the audit
consumer reads: bytes that are not an event, an ``admin.action`` of a version nobody
knows, then a valid ``admin.action``. The valid one must reach the audit log (the key is
not blocked), the other two must be in the audit consumer's dead letters, and
``agora_events_dead_lettered{consumer="audit"}`` on ``/metrics`` must have grown by two.
"""

import asyncio
import re
import time
import uuid

import msgspec
import pulsar
import pytest

from streams.events import ADMIN_ACTION, encode, make_event, topic_for

pytestmark = pytest.mark.e2e

CONSUMER = "audit"


def _dead_lettered(http) -> float:
    text = http.get("/metrics").text
    found = re.search(rf'^agora_events_dead_lettered{{consumer="{CONSUMER}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _publish(pulsar_url: str, topic: str, key: str, messages: list[tuple[bytes, dict]]) -> None:
    client = pulsar.Client(pulsar_url, operation_timeout_seconds=10)
    try:
        producer = client.create_producer(topic)
        for data, properties in messages:
            producer.send(data, partition_key=key, properties=properties)
        producer.close()
    finally:
        client.close()


async def test_garbage_and_unknown_versions_are_dead_lettered_counted_and_block_nothing(
    http, db, pulsar_url, system
):
    before = _dead_lettered(http)
    key = f"e2e-faults-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    payload = {"actor": "e2e", "action": "test.fault", "target": key, "details": {}}
    unknown = msgspec.structs.replace(
        make_event(ADMIN_ACTION, key, payload, now_ms), version=ADMIN_ACTION.version + 41
    )
    valid = make_event(ADMIN_ACTION, key, {**payload, "action": "test.after_faults"}, now_ms)
    topic = topic_for(ADMIN_ACTION.name, system.events_tenant, system.events_namespace)
    await asyncio.to_thread(
        _publish,
        pulsar_url,
        topic,
        key,
        [
            (b"\x00 not an event {", {"event_id": str(uuid.uuid4()), "type": "admin.action"}),
            (encode(unknown), {"event_id": unknown.id, "type": unknown.type}),
            (encode(valid), {"event_id": valid.id, "type": valid.type}),
        ],
    )
    deadline = time.monotonic() + 60
    while not await db.fetchval("SELECT 1 FROM audit_log WHERE event_id = $1", valid.id):
        assert time.monotonic() < deadline, "the valid event behind two bad ones never landed"
        await asyncio.sleep(0.3)
    rows = await db.fetch(
        "SELECT event_id, reason FROM dead_letters WHERE consumer = $1 AND at > now() - interval"
        " '5 minutes' ORDER BY id",
        CONSUMER,
    )
    reasons = {r["event_id"]: r["reason"] for r in rows}
    assert unknown.id in reasons and "is not known" in reasons[unknown.id], reasons
    assert any(r.startswith("undecodable") for r in reasons.values()), reasons
    assert not await db.fetchval("SELECT 1 FROM audit_log WHERE event_id = $1", unknown.id)
    assert _dead_lettered(http) >= before + 2
