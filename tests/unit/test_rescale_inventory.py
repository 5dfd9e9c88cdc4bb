"""Live rescaling of inventory with Ray forbidden: holds handed over with their SKU, many-line
commands that straddle the old and new owners, TTLs after the reload, and checkout-like
traffic (reserve, then commit or release) while ``cluster.scaling.rescale`` moves the SKUs.

As in ``test_rescale``: in-process inventory shells on one in-memory store, a real
``Directory`` handing out in-process handles (``rescale_support``), the real ``InventoryClient``.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from actors.clients import InventoryClient, ShardOps
from actors.directory import HashRing, RingSpec, shard_name
from actors.inventory.actor import InventoryShardImpl
from actors.inventory.model import Done, Held, LineHold, Short, StockItem, StockView
from actors.messages import MOVED, Rejected, now_ms
from tests.unit.rescale_support import LocalDirectory, ShardWorld, shard_settings, split_by_move
from tests.unit.test_rescale import SlowStore
from tests.unit.test_shell_in_memory import MemoryPool

KIND = "inventory"


def settings(shards: int) -> SimpleNamespace:
    return shard_settings(
        KIND, shards, reservation_ttl_s=60, sweep_interval_ms=10, low_stock_threshold=0
    )


class GatedStore(SlowStore):
    """Loads of the SKUs in ``gates`` wait until their event is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}

    async def load(self, conn: Any, key: str) -> tuple[dict[str, Any], int] | None:
        gate = self.gates.get(key)
        if gate is not None:
            await gate.wait()
        return await super().load(conn, key)


class World(ShardWorld):
    """Inventory shells by name on one store; ``now`` is their clock (real time unless set)."""

    kind = KIND
    impl = InventoryShardImpl

    def __init__(self, shards: int, stock: dict[str, int]) -> None:
        self.setup(settings(shards), GatedStore(), MemoryPool())
        self.now: list[int] | None = None
        for sku, units in stock.items():
            self.store.rows[sku] = (StockItem(sku, on_hand=units).to_doc(), 1)

    def clock(self) -> int:
        return now_ms() if self.now is None else self.now[0]

    async def stop(self) -> None:
        for shell in self.shells.values():
            await shell.drain()
            if shell._sweeper is not None:
                shell._sweeper.cancel()


def skus_by_move(before: int, after: int, count: int) -> tuple[list[str], list[str]]:
    """``count`` SKUs that change owner from ``before`` to ``after`` shards, and ``count`` that
    stay (each list spread over the old shards as the hash puts them)."""
    moving, staying = split_by_move(
        KIND, before, after, (f"SKU-{i:04d}" for i in range(count * 40))
    )
    return moving[:count], staying[:count]


def reserved(world: World, sku: str) -> dict[str, Any]:
    return world.row(sku)["reservations"]


# --- a hold moves with its SKU ------------------------------------------------------------


async def test_a_hold_made_on_the_old_owner_is_committed_and_released_on_the_new_one():
    moving, staying = skus_by_move(2, 4, 2)
    a, b = moving
    world = World(2, {a: 5, b: 5, staying[0]: 5})
    stale = InventoryClient(world.directory())  # never told of the new ring
    lines = (LineHold(a, "o1:a", 2), LineHold(staying[0], "o1:s", 1))
    assert all(isinstance(r, Held) for r in await stale.reserve_many("o1", lines))
    assert await stale.reserve(b, "r-b", 3) == StockView(b, 5, 3, 2)
    old_owner = world.directory().shard_for(KIND, a)

    handoff = await world.rescale(4)
    assert handoff.moved_keys >= 2 and a not in world.shells[old_owner].states
    assert "o1:a" in reserved(world, a) and "r-b" in reserved(world, b)  # flushed with it

    # The stale client is told "moved", follows, and the new owner loaded the hold.
    assert all(isinstance(r, Done) for r in await stale.commit_many(lines))
    assert stale.directory.epoch(KIND) == 1
    new_owner = stale.directory.shard_for(KIND, a)
    assert new_owner != old_owner and a in world.shells[new_owner].states
    assert world.row(a)["on_hand"] == 3 and reserved(world, a) == {}
    assert await stale.commit_many(lines) == [Done(1), Done(1)]  # idempotent after the move
    assert await stale.release(b, "r-b") == StockView(b, 5, 0, 5)
    assert world.row(b)["finished"] == {"r-b": "released"}
    await world.stop()


async def test_a_live_hold_counts_on_the_new_owner_so_nothing_is_oversold():
    (sku,), _ = skus_by_move(3, 5, 1)
    world = World(3, {sku: 3})
    client = InventoryClient(world.directory())
    assert isinstance(await client.reserve(sku, "first", 3), StockView)
    await world.rescale(5)
    again = await InventoryClient(world.directory()).reserve(sku, "second", 1)
    assert isinstance(again, Rejected) and again.code == "insufficient"
    (short,) = await client.reserve_many("o2", (LineHold(sku, "o2:x", 1),))
    assert isinstance(short, Short) and short.lines[0].available == 0
    assert isinstance(await client.reserve(sku, "first", 3), StockView)  # a repeat: still held
    assert world.row(sku)["on_hand"] == 3 and list(reserved(world, sku)) == ["first"]
    await world.stop()


async def test_the_ttl_of_a_moved_hold_runs_on_after_the_reload():
    (sku,), _ = skus_by_move(2, 3, 1)
    world = World(2, {sku: 4})
    world.now = [1_700_000_000_000]
    client = InventoryClient(world.directory())
    assert isinstance(await client.reserve(sku, "short", 4, 1), StockView)  # 1 s hold
    await world.rescale(3)
    new_owner = world.shells[world.directory().shard_for(KIND, sku)]
    assert await client.get(sku) == StockView(sku, 4, 4, 0)  # loaded with its hold
    world.now[0] += 1_001  # expired: reads ignore it, the new owner's sweeper drops it
    assert await client.get(sku) == StockView(sku, 4, 0, 4)
    for _ in range(200):
        if not reserved(world, sku):
            break
        world.now[0] += 10
        await asyncio.sleep(0.01)
    assert reserved(world, sku) == {} and world.row(sku)["finished"] == {"short": "released"}
    assert new_owner.flusher.committed_rows >= 1  # the new owner wrote the release
    late = await client.commit(sku, "short")
    assert isinstance(late, Rejected) and late.code == "unknown-reservation"
    await world.stop()


# --- many-line commands across the move -----------------------------------------------------


async def test_a_group_that_straddles_the_move_is_refused_whole_then_held_once_on_each_owner():
    moving, staying = skus_by_move(2, 4, 3)
    world = World(2, {sku: 2 for sku in moving + staying})
    # Lines all on one old shard: one that moves and one that stays (the same old owner).
    old = HashRing([shard_name(KIND, i) for i in range(2)], 16)
    pair = next((m, s) for m in moving for s in staying if old.node_for(m) == old.node_for(s))
    owner = world.shell(old.node_for(pair[0]))
    spec = RingSpec(KIND, 1, 4, previous=2)
    world.rings.specs[KIND] = spec
    await owner.adopt_ring(1, 4, 2)  # handing off: the old owner refuses the SKU it gives
    lines = (LineHold(pair[0], "o1:m", 2), LineHold(pair[1], "o1:s", 1))
    refused = await owner.call("reserve_many", "o1", lines)
    assert isinstance(refused, Rejected) and refused.code == MOVED and refused.ring == (1, 4)
    assert world.row(pair[1])["reservations"] == {}  # the staying line was not held either
    assert (await owner.get(pair[1])) == StockView(pair[1], 2, 0, 2)

    # A stale client sends that group there, is told "moved", regroups; the new owner's
    # lines wait for the end of the handoff, then everything is held once.
    stale = InventoryClient(LocalDirectory(2, world))
    reserving = asyncio.create_task(stale.reserve_many("o1", lines))
    await asyncio.sleep(0.05)
    assert not reserving.done()  # the gained SKU waits for the handoff to end
    for name in spec.names():
        await world.shell(name).adopt_ring(1, 4, 2)
    world.rings.specs[KIND] = spec.settled()
    for name in spec.names():
        await world.shell(name).adopt_ring(1, 4, None)
    replies = await asyncio.wait_for(reserving, 2)
    assert sorted(rid for r in replies for rid in r.rids) == ["o1:m", "o1:s"]
    assert len(replies) == 2 and stale.directory.epoch(KIND) == 1
    assert list(reserved(world, pair[0])) == ["o1:m"] and list(reserved(world, pair[1])) == ["o1:s"]
    await world.stop()


async def test_a_ring_change_while_a_group_loads_changes_nothing_on_the_old_owner():
    """The SKUs of a group load in parallel: one given away meanwhile (flushed, dropped)
    must not be changed by the group when the last load returns: "moved", nothing held."""
    moving, staying = skus_by_move(2, 4, 6)
    old = HashRing([shard_name(KIND, i) for i in range(2)], 16)
    gone, slow = next((m, s) for m in moving for s in staying if old.node_for(m) == old.node_for(s))
    world = World(2, {gone: 5, slow: 5})
    owner = world.shell(old.node_for(gone))
    assert isinstance(await owner.get(gone), StockView)  # resident
    world.store.gates[slow] = asyncio.Event()  # the other SKU's load hangs
    lines = (LineHold(gone, "o1:g", 1), LineHold(slow, "o1:s", 1))
    reserving = asyncio.create_task(owner.call("reserve_many", "o1", lines))
    await asyncio.sleep(0.02)
    world.rings.specs[KIND] = RingSpec(KIND, 1, 4, previous=2)
    report = await owner.adopt_ring(1, 4, 2)
    assert report["moved_out"] == 1 and gone not in owner.states
    world.store.gates[slow].set()
    reply = await asyncio.wait_for(reserving, 2)
    assert isinstance(reply, Rejected) and reply.code == MOVED
    assert reserved(world, gone) == {} and owner.flusher.tracker.is_dirty(gone) is False
    await owner.drain()
    assert slow not in world.store.rows or reserved(world, slow) == {}
    await world.stop()


# --- checkout-like traffic while inventory rescales ---------------------------------------------


async def run_orders_during(world: World, steps: list[int], skus: list[str]) -> dict[str, Any]:
    """Shoppers reserve 1-4 lines, then commit (or, one order in five, release) them through
    their own, soon stale, clients while the SKUs move through ``steps``."""
    clients = [InventoryClient(world.directory()) for _ in range(6)]
    sold: dict[str, int] = dict.fromkeys(skus, 0)
    outcome = {"confirmed": 0, "short": 0, "released": 0, "errors": 0}
    stop = asyncio.Event()
    rng = random.Random(12)
    counter = iter(range(1_000_000))

    async def shopper(client: InventoryClient) -> None:
        while not stop.is_set():
            oid = f"o{next(counter)}"
            picked = rng.sample(skus, rng.randint(1, 4))
            lines = tuple(LineHold(s, f"{oid}:{s}", rng.randint(1, 2)) for s in picked)
            try:
                replies = await client.reserve_many(oid, lines)
                held = {rid for r in replies if isinstance(r, Held) for rid in r.rids}
                if any(isinstance(r, Short) for r in replies) or rng.random() < 0.2:
                    done = await client.release_many(lines)
                    assert all(isinstance(d, Done) for d in done)
                    outcome["short" if held != {x.rid for x in lines} else "released"] += 1
                    continue
                committed = await client.commit_many(lines)
            except Exception:
                outcome["errors"] += 1
                continue
            assert all(isinstance(d, Done) for d in committed), committed
            for line in lines:
                sold[line.sku] += line.quantity
            outcome["confirmed"] += 1

    tasks = [asyncio.create_task(shopper(c)) for c in clients]
    await asyncio.sleep(0.2)
    for target in steps:
        await world.rescale(target)
        await asyncio.sleep(0.2)
    for _ in range(100):  # enough orders in all, some of them after the last step
        if outcome["confirmed"] >= 60:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    return {"sold": sold, **outcome}


@pytest.mark.parametrize("steps", [[4], [5, 2, 3], [1]])
async def test_no_hold_is_lost_and_nothing_is_oversold_while_inventory_rescales(steps):
    skus = [f"SKU-{i:03d}" for i in range(24)]
    initial = {sku: 6 if i % 2 else 40 for i, sku in enumerate(skus)}  # some run short
    world = World(2, initial)
    result = await run_orders_during(world, steps, skus)
    assert result["errors"] == 0, result
    assert result["confirmed"] > 50 and result["short"] > 0, result
    reader = InventoryClient(world.directory())
    for sku in skus:
        audit = await reader.audit(sku)
        assert audit.on_hand == initial[sku] - result["sold"][sku] >= 0, sku
        assert audit.committed_units == result["sold"][sku] and audit.live == {}, sku
    await ShardOps(world.directory()).drain_all((KIND,))
    for sku in skus:  # and in the store: every sale, no hold left behind
        assert world.row(sku)["on_hand"] == initial[sku] - result["sold"][sku]
        assert reserved(world, sku) == {}
    owners = {sku: world.directory().shard_for(KIND, sku) for sku in skus}
    for name, shell in world.shells.items():
        assert all(owners[sku] == name for sku in shell.states)  # nothing stale stays
    await world.stop()
