"""Live rescaling with Ray forbidden: rings, the shell's handoff, the typed client following
"moved", and ``cluster.scaling.rescale`` end to end on in-process cart shells.

The shells run on an in-memory store (as in ``test_shell_in_memory``); a ``Directory``
subclass hands out in-process handles instead of Ray actors, so the routing, the ring
changes and the clients are the real code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from types import SimpleNamespace
from typing import Any

import pytest

from actors import shard as shard_module
from actors.cart.actor import CartShardImpl
from actors.clients import CartClient, ShardOps
from actors.directory import Directory, HashRing, Ownership, RingSpec, shard_name
from actors.messages import MOVED, Rejected
from actors.shard import HandoffPending, ShardEnv
from cluster.adapters.rings import RingConflict
from cluster.scaling import ScaleError, parse_targets, rescale
from tests.unit.test_shell_in_memory import MemoryPool, MemoryStore


class SlowStore(MemoryStore):
    """Loads and writes take a little time, so calls interleave as they do against PostgreSQL."""

    async def upsert(self, conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        await asyncio.sleep(0.002)
        await super().upsert(conn, rows)

    async def load(self, conn: Any, key: str) -> tuple[dict[str, Any], int] | None:
        await asyncio.sleep(0.001)
        return await super().load(conn, key)


class MemoryRings:
    """The ring store port over a dict, with the PostgreSQL adapter's conditional begin."""

    def __init__(self) -> None:
        self.specs: dict[str, RingSpec] = {}

    async def load(self, conn: Any, kind: str) -> RingSpec | None:
        return self.specs.get(kind)

    async def begin(self, conn: Any, spec: RingSpec) -> None:
        stored = self.specs.get(spec.kind)
        if (stored.epoch if stored else 0) != spec.epoch - 1:
            raise RingConflict("changed meanwhile")
        self.specs[spec.kind] = spec

    async def settle(self, conn: Any, spec: RingSpec) -> None:
        if self.specs[spec.kind].epoch == spec.epoch:
            self.specs[spec.kind] = spec.settled()


def settings(shards: int) -> SimpleNamespace:
    return SimpleNamespace(
        flush_batch_size=100,
        flush_interval_ms=5,
        shard_max_keys=10_000,
        cart_max_lines=50,
        cart_max_quantity=10_000,
        cart_shards=shards,
        virtual_nodes=16,
        events_tenant="agora",
        events_namespace="events",
    )


class _Method:
    def __init__(self, shell: CartShardImpl, method: str) -> None:
        self.shell, self.method = shell, method

    async def _run(self, *args: Any) -> Any:
        await asyncio.sleep(0)  # a hop: the caller yields, as on a Ray call
        return await getattr(self.shell, self.method)(*args)

    def remote(self, *args: Any) -> Any:
        return self._run(*args)


class _Handle:
    def __init__(self, shell: CartShardImpl) -> None:
        self.shell = shell

    def __getattr__(self, method: str) -> _Method:
        return _Method(self.shell, method)


class LocalDirectory(Directory):
    """The real directory, with in-process shells where Ray actors would be."""

    def __init__(self, shards: int, world: World) -> None:
        super().__init__({"cart": (CartShardImpl, shards)}, namespace="test", vnodes=16)
        self.world = world

    def handle(self, name: str) -> Any:
        return _Handle(self.world.shell(name))


class World:
    """Shells by name on one store, as the shard actors share one PostgreSQL."""

    def __init__(self, shards: int) -> None:
        self.store, self.pool, self.rings = SlowStore(), MemoryPool(), MemoryRings()
        self.settings = settings(shards)
        self.shells: dict[str, CartShardImpl] = {}

    def env(self) -> ShardEnv:
        async def open_pool() -> MemoryPool:
            return self.pool

        return ShardEnv(
            settings=self.settings, store=self.store, open_pool=open_pool, rings=self.rings
        )

    def shell(self, name: str) -> CartShardImpl:
        if name not in self.shells:
            self.shells[name] = CartShardImpl(name, self.env())
        return self.shells[name]

    def directory(self) -> LocalDirectory:
        """A directory on the stored ring, as ``cluster.bootstrap.current_directory`` builds."""
        directory = LocalDirectory(self.settings.cart_shards, self)
        for spec in self.rings.specs.values():
            directory.adopt(spec.kind, spec.epoch, spec.shards)
        return directory


def quantity(view: Any, sku: str) -> int:
    return sum(line.quantity for line in view.lines if line.sku == sku)


def keys_moving(before: int, after: int, count: int) -> list[str]:
    old = HashRing([shard_name("cart", i) for i in range(before)], 16)
    new = HashRing([shard_name("cart", i) for i in range(after)], 16)
    keys = [f"c{i}" for i in range(count * 20)]
    return [k for k in keys if old.node_for(k) != new.node_for(k)][:count]


# --- rings and the directory ----------------------------------------------------


def test_ownership_says_what_a_shard_keeps_gives_away_and_gains():
    spec = RingSpec("cart", 2, 4, previous=2)
    old = HashRing([shard_name("cart", i) for i in range(2)], 16)
    new = HashRing([shard_name("cart", i) for i in range(4)], 16)
    keys = [f"k{i}" for i in range(2000)]
    for name in spec.names():
        ours = Ownership(name, spec, 16)
        for key in keys:
            assert ours.owns(key) == (new.node_for(key) == name)
            assert ours.gains(key) == (old.node_for(key) != name)
    assert spec.names() == [shard_name("cart", i) for i in range(4)]
    assert RingSpec("cart", 3, 2, previous=4).names() == [shard_name("cart", i) for i in range(4)]
    assert not spec.settled().handing_off and not Ownership("agora:cart:3", spec.settled()).gains(
        "k1"
    )


def test_a_directory_follows_only_newer_rings():
    directory = Directory({"cart": (object, 2)}, namespace="t", vnodes=16)
    assert directory.epoch("cart") == 0 and len(directory.shard_names("cart")) == 2
    assert directory.adopt("cart", 1, 5)
    assert directory.shard_names("cart") == [shard_name("cart", i) for i in range(5)]
    assert not directory.adopt("cart", 1, 3) and not directory.adopt("cart", 0, 3)
    assert len(directory.shard_names("cart")) == 5 and directory.epoch("cart") == 1
    ring = HashRing(directory.shard_names("cart"), 16)
    assert all(directory.shard_for("cart", f"k{i}") == ring.node_for(f"k{i}") for i in range(500))


def test_scale_targets_parse_and_refuse_clearly():
    assert parse_targets(["cart=8", "session=3", "api=2"]) == {"cart": 8, "session": 3, "api": 2}
    assert parse_targets(["inventory=6"]) == {"inventory": 6}  # moved live too
    assert parse_targets(["order=3"]) == {"order": 3}  # and orders, sagas and all
    for words, needle in [
        ([], "nothing to scale"),
        (["cart"], "kind=count"),
        (["cart=0"], "between 1 and"),
        (["cart=2", "cart=3"], "twice"),
        (["users=3"], "not a kind"),
        (["api=100"], "between 1 and"),
    ]:
        with pytest.raises(ScaleError, match=needle):
            parse_targets(words)


# --- the shell's handoff ----------------------------------------------------------


async def test_the_old_owner_flushes_before_answering_and_then_refuses_as_moved():
    world = World(1)
    old = world.shell("agora:cart:0")
    key = keys_moving(1, 2, 1)[0]
    await old.call("add_item", key, "SKU-1", "Mug", 1990, 2)
    assert old.flusher.tracker.is_dirty(key) or key in world.store.rows

    handing = RingSpec("cart", 1, 2, previous=1)
    world.rings.specs["cart"] = handing
    new = world.shell("agora:cart:1")
    gained = asyncio.create_task(new.call("view", key))  # the new owner waits: not loaded yet
    report = await old.adopt_ring(1, 2, 1)
    assert report["moved_out"] == 1 and key not in old.states
    assert world.store.rows[key][1] == 1  # flushed before the answer
    await asyncio.sleep(0.05)
    assert not gained.done() and new.loads == 0

    moved = await old.call("add_item", key, "SKU-1", "Mug", 1990, 1)
    assert isinstance(moved, Rejected) and moved.code == MOVED and moved.ring == (1, 2)
    assert "agora:cart:1" in moved.detail

    await new.adopt_ring(1, 2, 1)  # the new shard knew the ring already: nothing to give
    world.rings.specs["cart"] = handing.settled()
    await new.adopt_ring(1, 2, None)
    view = await asyncio.wait_for(gained, 1)
    assert quantity(view, "SKU-1") == 2 and new.loads == 1


async def test_a_gained_key_fails_loudly_when_the_handoff_never_ends(monkeypatch):
    monkeypatch.setattr(shard_module, "HANDOFF_WAIT_S", 0.05)
    world = World(1)
    key = keys_moving(1, 2, 1)[0]
    world.rings.specs["cart"] = RingSpec("cart", 1, 2, previous=1)
    with pytest.raises(HandoffPending):
        await world.shell("agora:cart:1").add_item(key, "SKU-1", "Mug", 100, 1)
    assert key not in world.store.rows


async def test_a_stale_adopt_changes_nothing():
    world = World(2)
    world.rings.specs["cart"] = RingSpec("cart", 3, 2)
    shell = world.shell("agora:cart:0")
    await shell.ping()
    assert (await shell.adopt_ring(2, 4, 2))["stale"]
    assert shell.ring is not None and shell.ring.spec == RingSpec("cart", 3, 2)


# --- clients and rescale end to end -------------------------------------------------


async def test_a_stale_client_follows_moved_to_the_new_owner():
    world = World(2)
    before = world.directory()
    carts = CartClient(before)
    keys = keys_moving(2, 4, 10)
    for key in keys:
        await carts.add_item(key, "SKU-1", "Mug", 100, 1)
    handoff = await rescale(
        "cart",
        4,
        rings=world.rings,
        connect=lambda: contextlib.nullcontext(None),
        ops=ShardOps(world.directory()),
        default_shards=2,
    )
    assert (handoff.before, handoff.after, handoff.moved_keys) == (2, 4, 10)
    assert before.epoch("cart") == 0  # this client has not heard yet
    for key in keys:
        view = await carts.add_item(key, "SKU-1", "Mug", 100, 1)
        assert quantity(view, "SKU-1") == 2
    assert before.epoch("cart") == 1 and len(before.shard_names("cart")) == 4


async def run_traffic_during(world: World, steps: list[int]) -> tuple[dict[str, int], int]:
    """Concurrent shoppers add to carts while the kind is rescaled through ``steps``."""
    clients = [CartClient(world.directory()) for _ in range(4)]
    acked: dict[str, int] = {}
    errors = 0
    stop = asyncio.Event()
    rng = random.Random(7)

    async def shopper(client: CartClient) -> None:
        nonlocal errors
        while not stop.is_set():
            key = f"cart-{rng.randrange(300)}"
            n = rng.randrange(1, 4)
            try:
                view = await client.add_item(key, "SKU-1", "Mug", 100, n)
            except Exception:
                errors += 1
                continue
            assert not isinstance(view, Rejected)
            acked[key] = acked.get(key, 0) + n

    tasks = [asyncio.create_task(shopper(c)) for c in clients]
    await asyncio.sleep(0.05)
    ops = ShardOps(world.directory())
    for target in steps:
        await rescale(
            "cart",
            target,
            rings=world.rings,
            connect=lambda: contextlib.nullcontext(None),
            ops=ops,
            default_shards=world.settings.cart_shards,
        )
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    return acked, errors


@pytest.mark.parametrize("steps", [[4], [4, 7, 3], [1]])
async def test_no_acknowledged_add_is_lost_while_carts_rescale(steps):
    world = World(2)
    acked, errors = await run_traffic_during(world, steps)
    assert errors == 0 and sum(acked.values()) > 100
    members = {shard_name("cart", i) for i in range(steps[-1])}
    assert members <= set(world.shells)
    for name in set(world.shells) - members:  # left by a scale-down: empty, refusing
        assert not world.shells[name].states
    reader = CartClient(world.directory())
    for key, count in acked.items():
        assert quantity(await reader.get(key), "SKU-1") == count
    await ShardOps(world.directory()).drain_all(("cart",))
    for key, count in acked.items():
        doc, _version = world.store.rows[key]
        assert sum(line["quantity"] for line in doc["lines"]) == count
    owners = {key: world.directory().shard_for("cart", key) for key in acked}
    for name, shell in world.shells.items():
        assert all(owners[key] == name for key in shell.states)  # nothing stale stays


async def test_an_interrupted_rescale_resumes_and_a_different_target_is_refused():
    world = World(2)
    world.rings.specs["cart"] = RingSpec("cart", 1, 3, previous=2)
    args: dict[str, Any] = {
        "rings": world.rings,
        "connect": lambda: contextlib.nullcontext(None),
        "ops": ShardOps(world.directory()),
        "default_shards": 2,
    }
    with pytest.raises(ScaleError, match="agora scale cart=3"):
        await rescale("cart", 5, **args)
    handoff = await rescale("cart", 3, **args)
    assert handoff.epoch == 1 and world.rings.specs["cart"] == RingSpec("cart", 1, 3)
    again = await rescale("cart", 3, **args)
    assert "already 3 shards" in again.describe()
    with pytest.raises(ScaleError, match="not a shard kind"):
        await rescale("users", 3, **args)


async def test_traced_calls_are_refused_as_moved_too_and_unnamed_shells_own_everything():
    world = World(2)
    world.rings.specs["cart"] = RingSpec("cart", 1, 2)
    key = next(
        k
        for k in (f"k{i}" for i in range(100))
        if Ownership("agora:cart:1", world.rings.specs["cart"], 16).owns(k)
    )
    shell = world.shell("agora:cart:0")
    moved = await shell.traced({}, "add_item", key, "SKU-1", "Mug", 100, 1)
    assert isinstance(moved, Rejected) and moved.code == MOVED and moved.ring == (1, 2)
    apart = CartShardImpl("test:cart-bench:0", world.env())  # made apart, not in the ring
    view = await apart.call("add_item", key, "SKU-1", "Mug", 100, 1)
    assert quantity(view, "SKU-1") == 1 and apart.ring is None
