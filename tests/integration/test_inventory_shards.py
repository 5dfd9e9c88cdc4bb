"""Inventory shards on real Ray and PostgreSQL: no oversell, durability, kills."""

import asyncio
import random
import uuid

import pytest
import ray

from actors.clients import InventoryClient
from actors.inventory.model import Done, Held, LineHold, Short, StockView
from actors.messages import Rejected
from serve.runtime import shard_directory
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def directory(system):
    return shard_directory(system)


@pytest.fixture(scope="module")
def inventory(directory):
    return InventoryClient(directory)


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


async def test_concurrent_reservations_never_oversell(inventory, db):
    k, n = 7, 40
    sku = await fresh_sku(db, k)
    replies = await asyncio.gather(*[inventory.reserve(sku, f"r-{i}", 1) for i in range(n)])
    assert sum(isinstance(r, StockView) for r in replies) == k
    assert all(r.code == "insufficient" for r in replies if isinstance(r, Rejected))
    stock = await inventory.get(sku)
    assert stock.available == 0 and stock.reserved == k
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert (row["on_hand"], row["reserved"]) == (k, k)


async def test_reserve_is_durable_before_it_answers(inventory, db):
    sku = await fresh_sku(db, 10)
    assert isinstance(await inventory.reserve(sku, "r1", 3), StockView)
    row = await db.fetchrow("SELECT reserved, data FROM inventory WHERE sku = $1", sku)
    assert row["reserved"] == 3 and "r1" in row["data"]["reservations"]
    assert isinstance(await inventory.commit(sku, "r1"), StockView)
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert (row["on_hand"], row["reserved"]) == (7, 0)
    events = await db.fetch(
        "SELECT type FROM outbox WHERE key = $1 AND type LIKE 'inventory.%'", sku
    )
    assert [e["type"] for e in events] == ["inventory.changed"]


async def test_expired_reservations_are_released_by_the_sweeper(inventory, db):
    sku = await fresh_sku(db, 2)
    assert isinstance(await inventory.reserve(sku, "short", 2, 1), StockView)
    assert (await inventory.get(sku)).available == 0

    async def released():
        row = await db.fetchrow("SELECT reserved, data FROM inventory WHERE sku = $1", sku)
        return row["reserved"] == 0 and row["data"]["reservations"] == {}

    await eventually(released, timeout=10, interval=0.1)
    assert isinstance(await inventory.commit(sku, "short"), Rejected)


async def test_many_lines_one_call_per_shard_all_or_nothing(inventory, directory, db):
    """An order's lines over several shards: each shard holds all its lines or none;
    repeats hold nothing twice; commit and release are durable and idempotent."""
    skus = [await fresh_sku(db, 3) for _ in range(6)]
    assert len({directory.shard_for("inventory", s) for s in skus}) > 1
    lines = tuple(LineHold(s, f"o1:{s}", 2) for s in skus)
    replies = await inventory.reserve_many("o1", lines)
    assert all(isinstance(r, Held) for r in replies)
    assert len(replies) == len({directory.shard_for("inventory", s) for s in skus})
    assert all(isinstance(r, Held) for r in await inventory.reserve_many("o1", lines))
    views = [await inventory.get(s) for s in skus]
    assert sum(v.reserved for v in views) == 12
    short = (LineHold(skus[0], f"o2:{skus[0]}", 2),)  # only 1 left
    (reply,) = await inventory.reserve_many("o2", short)
    assert isinstance(reply, Short) and reply.lines[0].available == 1
    assert (await inventory.get(skus[0])).reserved == 2
    assert all(isinstance(r, Done) for r in await inventory.commit_many(lines))
    assert all(isinstance(r, Done) for r in await inventory.commit_many(lines))
    rows = await db.fetch("SELECT on_hand, reserved FROM inventory WHERE sku = ANY($1)", skus)
    assert {(r["on_hand"], r["reserved"]) for r in rows} == {(1, 0)}
    gone = (LineHold(skus[1], "never-held", 1),)
    assert all(isinstance(r, Rejected) for r in await inventory.commit_many(gone))


async def _call(shard, method, *args):
    """Call a shard, retrying through a restart with the same (idempotent) arguments."""
    for _ in range(200):
        try:
            return await getattr(shard, method)(*args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"{method} never answered")


async def test_random_operations_with_shard_kills_keep_the_invariant(inventory, directory, db):
    initial = 60
    sku = await fresh_sku(db, initial)
    shard = directory.get("inventory", sku)
    rng = random.Random(20261130)
    outcome = {}

    async def client(c: int) -> None:
        for step in range(25):
            rid = f"c{c}-{step}"
            reply = await _call(inventory, "reserve", sku, rid, rng.randint(1, 3))
            if isinstance(reply, Rejected):
                continue
            if rng.random() < 0.5:
                assert isinstance(await _call(inventory, "commit", sku, rid), StockView)
                outcome[rid] = "committed"
            elif rng.random() < 0.5:
                assert isinstance(await _call(inventory, "release", sku, rid), StockView)
                outcome[rid] = "released"
            else:
                outcome[rid] = "held"

    async def killer() -> None:
        for _ in range(3):
            await asyncio.sleep(0.3)
            ray.kill(shard, no_restart=False)

    await asyncio.gather(*[client(c) for c in range(6)], killer())
    audit = await _call(inventory, "audit", sku)
    assert audit.on_hand + audit.committed_units == initial
    assert audit.on_hand >= 0
    held = {rid for rid, how in outcome.items() if how == "held"}
    assert set(audit.live) == held
    assert audit.reserved == sum(audit.live.values())
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    assert row["on_hand"] == audit.on_hand and row["reserved"] == audit.reserved
