"""``agora analytics rebuild``: replaying real Pulsar topics from their start (with the
order lines read from the real PostgreSQL) gives byte-identical warehouses."""

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pulsar
import pytest

from cluster.db import create_pool
from streams.consumers.warehouse import DOMAINS, replay, warehouse_topics
from streams.events import (
    CART_ITEM_ADDED,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    PRODUCT_VIEWED,
    encode,
    make_event,
    topic_for,
)
from streams.warehouse import EVENTS, ORDER_LINES, ROLLUP_SCHEMAS, SOURCES_FILE, Warehouse

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def _topic(event_type: str, run: str) -> str:
    return f"{topic_for(event_type, 'agora', 'events')}-test-wh-{run}"


# Every day's rollups and the record of what they were built from (part of the
# byte-identical promise too).
ROLLUP_FILES = [
    f"rollups/{span}/{name}"
    for span in ("day=2026-11-01", "day=2026-11-02", "day=2026-11-03", "month=2026-11")
    for name in sorted([*(f"{n}.parquet" for n in ROLLUP_SCHEMAS), SOURCES_FILE])
] + [
    f"rollups/year=2026/{name}"
    for name in ("funnel_events.parquet", "funnel_visitors.parquet", SOURCES_FILE)
]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


async def test_two_rebuilds_of_the_same_topics_are_byte_identical(db_url, pulsar_url, tmp_path):
    run = uuid.uuid4().hex[:10]
    order_id, sku = f"o-{run}", f"TST-{run.upper()}"
    pool = await create_pool(db_url, max_size=2)
    try:
        await pool.execute(
            "INSERT INTO products (sku, name, description, category, price_minor)"
            " VALUES ($1, 'Test item', 'For tests', 'rebuild', 2500)",
            sku,
        )
        order = {
            "lines": [{"sku": sku, "quantity": 2, "unit_price": 2500, "line_total": 4500}],
            "totals": {"subtotal": 5000, "discount_total": 500, "total": 4500, "currency": "BRL"},
        }
        await pool.execute(
            "INSERT INTO orders (order_id, user_id, status, step, data, version)"
            " VALUES ($1, 'u-rebuild', 'confirmed', 'done', $2::text::jsonb, 1)",
            order_id,
            json.dumps(order),
        )
        events = [
            make_event(PRODUCT_VIEWED, "v", {"sku": sku, "visitor": f"v{i % 3}"}, START_MS + i)
            for i in range(40)
        ]
        events += [
            make_event(
                CART_ITEM_ADDED,
                "c1",
                {"cart_id": "c1", "sku": sku, "quantity": 1},
                START_MS + DAY_MS,
            ),
            make_event(INVENTORY_CHANGED, sku, {"sku": sku, "available": 0}, START_MS + DAY_MS),
            make_event(
                ORDER_CONFIRMED,
                order_id,
                {"order_id": order_id, "user_id": "u-rebuild", "total": 4500},
                START_MS + 2 * DAY_MS,
            ),
        ]
        client = pulsar.Client(pulsar_url)
        producers: dict[str, pulsar.Producer] = {}
        try:
            for event in events + events[:5]:  # some published twice
                topic = _topic(event.type, run)
                if topic not in producers:
                    producers[topic] = client.create_producer(topic)
                producers[topic].send(encode(event), partition_key=event.key)
        finally:
            client.close()
        # The warehouse's topics, made unique to this run (the real ones hold other tests').
        topics = sorted({_topic(t.name, run) for t in DOMAINS})
        assert len(topics) == len(warehouse_topics("agora", "events"))
        seen: list[int] = []
        first = await replay(pulsar_url, topics, pool, Warehouse(tmp_path / "a"), seen.append)
        second = await replay(pulsar_url, topics, pool, Warehouse(tmp_path / "b"), batch=7)
    finally:
        await pool.close()
    assert first == second == len(events) + 5 == len(seen)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b
    assert sorted(a) == [
        "events/day=2026-11-01/data.parquet",
        "events/day=2026-11-02/data.parquet",
        "events/day=2026-11-03/data.parquet",
        "order_lines/day=2026-11-03/data.parquet",
        "paid_orders/day=2026-11-03/data.parquet",
        *ROLLUP_FILES,
    ]
    warehouse = Warehouse(tmp_path / "a")
    assert warehouse.scan(EVENTS).height == len(events)
    (line,) = warehouse.scan(ORDER_LINES).iter_rows(named=True)
    assert (line["category"], line["gross"], line["net"]) == ("rebuild", 5000, 4500)


def test_the_rebuild_command_writes_a_fresh_warehouse(system, tmp_path):
    out = tmp_path / "rebuilt"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "agora"), "analytics", "rebuild", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt" in done.stdout and "replaying" in done.stderr  # the progress bar
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "agora"), "analytics", "rebuild", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert refused.returncode == 1 and "not empty" in refused.stdout
