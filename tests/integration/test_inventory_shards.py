"""Inventory shards on real Ray and PostgreSQL: no oversell, durability, kills."""

import asyncio
import random
import uuid

import pytest
import ray

from serve.runtime import shard_directory
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def directory(system):
    return shard_directory(system)


async def fresh_sku(db, on_hand: int) -> str:
    """A new product of our own so tests never share stock."""
    sku = f"TST-{uuid.uuid4().hex[:12].upper()}"
    await db.execute(
        "INSERT INTO products (sku, name, description, category, price_minor)"
        " VALUES ($1, 'Test item', 'For tests', 'test', 1000)",
        sku,
    )
    await db.execute("INSERT INTO inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand)
    return sku


async def test_concurrent_reservations_never_oversell(directory, db):
    k, n = 7, 40
    sku = await fresh_sku(db, k)
    shard = directory.get("inventory", sku)
    replies = await asyncio.gather(*[shard.reserve.remote(sku, f"r-{i}", 1) for i in range(n)])
    assert sum(r["ok"] for r in replies) == k
    assert all(r["code"] == "insufficient" for r in replies if not r["ok"])
    stock = await shard.get.remote(sku)
    assert stock["available"] == 0 and stock["reserved"] == k
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert (row["on_hand"], row["reserved"]) == (k, k)


async def test_reserve_is_durable_before_it_answers(directory, db):
    sku = await fresh_sku(db, 10)
    shard = directory.get("inventory", sku)
    assert (await shard.reserve.remote(sku, "r1", 3))["ok"]
    row = await db.fetchrow("SELECT reserved, data FROM inventory WHERE sku = $1", sku)
    assert row["reserved"] == 3 and "r1" in row["data"]["reservations"]
    assert (await shard.commit.remote(sku, "r1"))["ok"]
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert (row["on_hand"], row["reserved"]) == (7, 0)
    events = await db.fetch(
        "SELECT type FROM outbox WHERE key = $1 AND type LIKE 'inventory.%'", sku
    )
    assert [e["type"] for e in events] == ["inventory.changed"]


async def test_expired_reservations_are_released_by_the_sweeper(directory, db):
    sku = await fresh_sku(db, 2)
    shard = directory.get("inventory", sku)
    assert (await shard.reserve.remote(sku, "short", 2, 1))["ok"]
    assert (await shard.get.remote(sku))["available"] == 0

    async def released():
        row = await db.fetchrow("SELECT reserved, data FROM inventory WHERE sku = $1", sku)
        return row["reserved"] == 0 and row["data"]["reservations"] == {}

    await eventually(released, timeout=10, interval=0.1)
    assert not (await shard.commit.remote(sku, "short"))["ok"]


async def _call(shard, method, *args):
    """Call a shard, retrying through a restart with the same (idempotent) arguments."""
    for _ in range(200):
        try:
            return await getattr(shard, method).remote(*args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"{method} never answered")


async def test_random_operations_with_shard_kills_keep_the_invariant(directory, db):
    initial = 60
    sku = await fresh_sku(db, initial)
    shard = directory.get("inventory", sku)
    rng = random.Random(20261130)
    outcome = {}

    async def client(c: int) -> None:
        for step in range(25):
            rid = f"c{c}-{step}"
            reply = await _call(shard, "reserve", sku, rid, rng.randint(1, 3))
            if not reply["ok"]:
                continue
            if rng.random() < 0.5:
                assert (await _call(shard, "commit", sku, rid))["ok"]
                outcome[rid] = "committed"
            elif rng.random() < 0.5:
                assert (await _call(shard, "release", sku, rid))["ok"]
                outcome[rid] = "released"
            else:
                outcome[rid] = "held"

    async def killer() -> None:
        for _ in range(3):
            await asyncio.sleep(0.3)
            ray.kill(shard, no_restart=False)

    await asyncio.gather(*[client(c) for c in range(6)], killer())
    audit = await _call(shard, "audit", sku)
    assert audit["on_hand"] + audit["committed_units"] == initial
    assert audit["on_hand"] >= 0
    held = {rid for rid, how in outcome.items() if how == "held"}
    assert set(audit["live"]) == held
    assert audit["reserved"] == sum(audit["live"].values())
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert row["on_hand"] == audit["on_hand"] and row["reserved"] == audit["reserved"]
