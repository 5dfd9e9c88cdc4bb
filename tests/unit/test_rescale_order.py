"""Live rescaling of order shards with Ray forbidden: a saga in flight when its order moves
stops at a step boundary on the old owner (the step under way finishes and commits first),
the new owner resumes it from that step and answers the caller that was waiting, and
checkouts run while ``cluster.scaling.rescale`` moves the orders 2 -> 3 -> 1.

As in ``test_rescale`` and ``test_rescale_inventory``: in-process order shells on one
in-memory store, a real ``Directory`` handing out in-process handles (``rescale_support``),
the real ``OrderClient``; the saga's ports are the in-memory fakes of ``test_saga`` (one outside
world for every shell: its calls count every charge, hold and commit), here with small
delays and gates so that steps are under way when a handoff begins. On the code before
order shards moved, every test here fails (``adopt_ring`` refused order shards and
``rescale("order", ...)`` was refused); the first ones also fail if order shards are
merely marked movable (the handoff then drops an order whose step is under way).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

import actors.order.actor as order_actor
from actors.clients import OrderClient, ShardOps
from actors.directory import RingSpec, shard_name
from actors.messages import MOVED, Rejected, now_ms
from actors.order.actor import OrderShardImpl
from actors.order.model import CartLine, Charge, OrderReply, PixSettled
from tests.unit.rescale_support import LocalDirectory, ShardWorld, shard_settings, split_by_move
from tests.unit.test_order_shell import CARD, PIX, OrderPool
from tests.unit.test_rescale import SlowStore
from tests.unit.test_saga import Clock, Fakes

KIND = "order"


class LiveClock(Clock):
    """Real time (flushes and backoffs run on it), pushed ahead by ``offset`` ms."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0

    def __call__(self) -> int:
        return now_ms() + self.offset


def owner_of(call: str, args: tuple[Any, ...]) -> str:
    """The order a port call is made for (each order here checks out its own cart)."""
    first = args[0]
    if call == "price":
        return str(first.cart_id).removeprefix("cart:")
    if call in ("snapshot", "clear"):
        return str(first).removeprefix("cart:")
    if call in ("commit", "release", "restock"):
        return str(first[0].rid).split(":")[0]
    return str(first)


class World(Fakes, ShardWorld):
    """The outside world of every order shell (carts, stock, pricing, fraud, PSP), with the
    shells by name on one store. Every port call takes a little time; ``gates`` hold a call
    for one order (after its effect) until released; ``overlaps`` counts any port call made
    for an order while another one for the same order was under way (two sagas at once)."""

    kind = KIND
    impl = OrderShardImpl

    def __init__(self, shards: int) -> None:
        super().__init__(LiveClock())  # the fakes; their ``clock`` and ``ports()`` serve the shells
        store = SlowStore()
        settings = shard_settings(KIND, shards, saga_step_deadline_s=30, checkout_wait_s=5.0)
        self.setup(settings, store, OrderPool(store))
        self.gates: dict[tuple[str, str], asyncio.Event] = {}
        self.entered: dict[tuple[str, str], asyncio.Event] = {}
        self.down: set[tuple[str, str]] = set()  # (call, order): raises until removed
        self.pix_recorded: set[str] = set()
        self.active: Counter[str] = Counter()
        self.overlaps = 0
        self.rng = random.Random(7)
        self.on_hand = {"A1": 10_000, "B1": 10_000}

    # --- the outside world ---------------------------------------------------------

    def cart(self, oid: str) -> str:
        self.carts[f"cart:{oid}"] = [
            CartLine("A1", "Apple", 1000, 2),
            CartLine("B1", "Book", 500, 1),
        ]
        return f"cart:{oid}"

    async def _port(self, call: str, args: tuple[Any, ...]) -> Any:
        oid = owner_of(call, args)
        self.active[oid] += 1
        self.overlaps += self.active[oid] > 1
        try:
            await asyncio.sleep(self.rng.uniform(0.001, 0.006))
            if (call, oid) in self.down:
                self.calls[f"{call}-failed", oid] += 1
                raise ConnectionError(f"{call} unreachable")
            if call == "pix_paid":  # as the gateway: recorded once, a repeat of it is True too
                self.pix_recorded.add(oid)
                result = True
            else:
                result = await getattr(Fakes, call)(self, *args)
            entered = self.entered.get((call, oid))
            if entered is not None:
                entered.set()
            gate = self.gates.get((call, oid))
            if gate is not None:
                await gate.wait()  # done, not answered yet: the step is under way
            return result
        finally:
            self.active[oid] -= 1

    async def snapshot(self, *args: Any) -> Any:
        return await self._port("snapshot", args)

    async def price(self, *args: Any) -> Any:
        return await self._port("price", args)

    async def screen(self, *args: Any) -> Any:
        return await self._port("screen", args)

    async def reserve(self, *args: Any) -> Any:
        return await self._port("reserve", args)

    async def charge(self, *args: Any) -> Any:
        return await self._port("charge", args)

    async def commit(self, *args: Any) -> Any:
        return await self._port("commit", args)

    async def clear(self, *args: Any) -> Any:
        return await self._port("clear", args)

    async def pix_paid(self, *args: Any) -> Any:
        self.calls["pix_paid", args[0]] += 1
        return await self._port("pix_paid", args)

    def hold(self, call: str, oid: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold ``call`` of order ``oid`` once done; (entered, release)."""
        self.entered[call, oid], self.gates[call, oid] = asyncio.Event(), asyncio.Event()
        return self.entered[call, oid], self.gates[call, oid]

    # --- the shells -------------------------------------------------------------------

    def units_sold(self) -> int:
        return 20_000 - sum(self.on_hand.values())

    async def stop(self) -> None:
        for shell in self.shells.values():
            await shell.drain()
            tasks = [*shell._background, *shell._tasks.values()]
            if shell.flusher._task is not None:
                tasks.append(shell.flusher._task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def orders_moving(before: int, after: int, count: int, prefix: str = "o") -> list[str]:
    moving, _ = split_by_move(KIND, before, after, (f"{prefix}{i}" for i in range(count * 40)))
    return moving[:count]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
async def worlds() -> Any:
    made: list[World] = []

    def make(shards: int) -> World:
        made.append(World(shards))
        return made[-1]

    yield make
    for world in made:
        await world.stop()


async def checkout(client: OrderClient, oid: str, world: World, body: Any = CARD) -> Any:
    return await client.checkout(oid, f"u-{oid}", f"hash-{oid}", body, world.cart(oid))


# --- a step under way when the order moves ------------------------------------------------


async def test_the_old_owner_answers_the_handoff_only_once_the_step_under_way_committed(worlds):
    """The charge is made, its answer is slow: the old owner's ``adopt_ring`` waits for it,
    commits ``charged`` and only then answers; the caller waiting on the checkout is told
    "moved" and gets the confirmed order from the new owner, which went on from ``charged``
    (one charge, one hold, one commit: nothing done twice, never on two shards at once)."""
    world = worlds(2)
    (oid,) = orders_moving(2, 3, 1)
    client = OrderClient(world.directory())  # never told of the new ring
    entered, release = world.hold("charge", oid)
    waiting = asyncio.create_task(checkout(client, oid, world))
    await asyncio.wait_for(entered.wait(), 2)
    old = world.shells[world.directory().shard_for(KIND, oid)]

    spec = RingSpec(KIND, 1, 3, previous=2)
    world.rings.specs[KIND] = spec
    adopting = asyncio.create_task(old.adopt_ring(1, 3, 2))
    await asyncio.sleep(0.1)
    assert not adopting.done()  # the charge is under way: the old owner does not answer yet
    assert world.row(oid)["step"] == "reserved"  # charged, but not committed yet
    assert not waiting.done()
    refused = await old.call("get", oid)  # new calls for it are refused at once
    assert isinstance(refused, Rejected) and refused.code == MOVED and refused.ring == (1, 3)

    release.set()
    report = await asyncio.wait_for(adopting, 2)
    assert report["moved_out"] >= 1 and oid not in old.states and oid not in old._tasks
    assert world.row(oid)["step"] == "charged"  # the step under way committed before the answer
    assert old.sagas_handed_over == 1
    assert not waiting.done()  # it waits on the new owner, until the handoff has ended

    handoff = await world.rescale(3)  # resumes the handoff begun above, and settles it
    assert handoff.epoch == 1 and world.rings.specs[KIND] == RingSpec(KIND, 1, 3)
    reply = await asyncio.wait_for(waiting, 5)
    assert isinstance(reply, OrderReply) and reply.order["status"] == "confirmed"
    assert client.directory.epoch(KIND) == 1  # it followed "moved"
    new = world.shells[client.directory.shard_for(KIND, oid)]
    assert new is not old and oid in new.states
    assert world.row(oid)["status"] == "confirmed"
    assert world.calls["charge", oid] == 1 and world.calls["reserve", oid] == 1
    assert world.calls["commit"] == 1 and world.calls["clear", f"cart:{oid}"] == 1
    assert world.units_sold() == 3 and world.holds == {} and world.overlaps == 0

    # The Idempotency-Key still works on the new owner: a replay, and a refused reuse.
    stale = OrderClient(LocalDirectory(2, world))
    again = await checkout(stale, oid, world)
    assert isinstance(again, OrderReply) and again.order == reply.order
    reused = await stale.checkout(oid, f"u-{oid}", "another-body", CARD, f"cart:{oid}")
    assert isinstance(reused, Rejected) and reused.code == "idempotency-key-reused"
    assert world.calls["charge", oid] == 1


@pytest.mark.parametrize(
    ("before", "after", "call"),
    [(2, 3, "reserve"), (3, 1, "commit"), (2, 3, "down")],
    ids=["2to3-during-reserve", "3to1-during-commit", "2to3-while-backing-off"],
)
async def test_a_waiting_checkout_gets_its_outcome_from_the_new_owner(worlds, before, after, call):
    """``rescale`` runs while a checkout waits on a saga whose step is under way (or, for
    "down", backing off after the PSP failed: the pause ends at once, no call is under way);
    the saga ends exactly once, on the new owner, and the caller gets its outcome."""
    world = worlds(before)
    (oid,) = orders_moving(before, after, 1)
    client = OrderClient(world.directory())
    if call == "down":
        world.down.add(("charge", oid))
        waiting = asyncio.create_task(checkout(client, oid, world))
        # Failed 5 times: backing off for 1-2 s now (capped, jittered).
        await until(lambda: world.calls["charge-failed", oid] >= 5)
    else:
        entered, release = world.hold(call, oid)
        waiting = asyncio.create_task(checkout(client, oid, world))
        await asyncio.wait_for(entered.wait(), 2)
    old = world.shells[world.directory().shard_for(KIND, oid)]
    rescaling = asyncio.create_task(world.rescale(after))
    if call == "down":
        handoff = await asyncio.wait_for(rescaling, 0.8)  # the pause did not hold it up
        world.down.clear()
    else:
        await asyncio.sleep(0.1)
        assert not rescaling.done()
        release.set()
        handoff = await asyncio.wait_for(rescaling, 2)
    assert handoff.moved_keys >= 1 and oid not in old.states
    reply = await asyncio.wait_for(waiting, 5)
    assert isinstance(reply, OrderReply) and reply.order["status"] == "confirmed", reply
    new = world.shells[world.directory().shard_for(KIND, oid)]
    assert new is not old and oid in new.states and world.row(oid)["status"] == "confirmed"
    assert list(world.charges) == [oid] and world.charges[oid].status == "succeeded"
    assert world.calls["reserve", oid] == 1 and world.calls["commit"] == 1
    assert world.units_sold() == 3 and world.holds == {} and world.overlaps == 0


async def test_an_unfinished_saga_nobody_waits_for_resumes_on_the_new_owner(worlds):
    """The checkout already answered (202: still running) when its order moved: the new owner
    resumes the saga by itself once the handoff has ended, as after a restart."""
    world = worlds(2)
    world.settings.checkout_wait_s = 0.05
    (oid,) = orders_moving(2, 3, 1)
    entered, release = world.hold("screen", oid)
    early = await checkout(OrderClient(world.directory()), oid, world)
    assert isinstance(early, OrderReply) and early.order["status"] == "pending"
    await asyncio.wait_for(entered.wait(), 2)
    rescaling = asyncio.create_task(world.rescale(3))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(rescaling, 2)
    await until(lambda: world.row(oid)["status"] == "confirmed")
    assert world.calls["screen"] == 1 and world.calls["charge", oid] == 1
    assert world.overlaps == 0


# --- Pix orders, operations and the expiry sweep ----------------------------------------------


async def test_pix_orders_move_the_old_owner_never_expires_them_and_the_new_one_does(
    worlds, monkeypatch
):
    """Two awaiting Pix orders move. While the old owner's handoff waits on a card saga's
    step, it does not expire them (they are being handed over); after the move one is paid
    through a stale client, the other expires on its new owner: voided and released once."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = worlds(2)
    old_name = shard_name(KIND, 0)
    moving = [
        o for o in orders_moving(2, 3, 12, "p") if world.directory().shard_for(KIND, o) == old_name
    ]
    paid, expiring, card = moving[:3]
    stale = OrderClient(world.directory())
    for oid in (paid, expiring):
        reply = await checkout(stale, oid, world, PIX)
        assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"
    entered, release = world.hold("charge", card)
    waiting = asyncio.create_task(checkout(stale, card, world))
    await asyncio.wait_for(entered.wait(), 2)

    world.clock.offset = 901_000  # both Pix charges are past their expiry now
    old = world.shells[old_name]
    world.rings.specs[KIND] = RingSpec(KIND, 1, 3, previous=2)
    adopting = asyncio.create_task(old.adopt_ring(1, 3, 2))
    await asyncio.sleep(0.1)  # many expiry sweeps while the handoff waits on the charge
    assert not adopting.done()
    assert world.calls["void", expiring] == 0 and world.calls["void", paid] == 0
    assert world.row(expiring)["step"] == "awaiting" and expiring in old.states
    world.clock.offset = 0
    release.set()
    await asyncio.wait_for(adopting, 2)
    await world.rescale(3)
    assert isinstance(await asyncio.wait_for(waiting, 5), OrderReply)

    total = world.row(paid)["totals"]["total"]
    assert await stale.pix_paid(paid, total) == PixSettled("paid", "confirmed")
    world.clock.offset = 901_000
    await until(lambda: world.row(expiring)["status"] == "failed")
    assert world.row(expiring)["failure"]["code"] == "payment-expired"
    assert world.calls["void", expiring] == 1 and world.calls["void", paid] == 0
    assert world.row(paid)["status"] == "confirmed" and world.holds == {}
    new = world.shells[world.directory().shard_for(KIND, expiring)]
    assert new is not old and expiring in new.states and expiring not in old.states


async def test_a_pix_payment_recorded_while_its_order_moves_is_not_lost(worlds):
    """The webhook's PSP call is under way when the order's handoff begins: the old owner
    records the payment before it answers the handoff (the PSP is asked once; asked again,
    the gateway would answer "already recorded", see ``test_order_crash_safety``); the
    webhook is answered by the new owner, which finishes the saga."""
    world = worlds(2)
    (oid,) = orders_moving(2, 3, 1, "x")
    stale = OrderClient(world.directory())
    reply = await checkout(stale, oid, world, PIX)
    assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"
    entered, release = world.hold("pix_paid", oid)
    paying = asyncio.create_task(stale.pix_paid(oid, reply.order["totals"]["total"]))
    await asyncio.wait_for(entered.wait(), 2)
    rescaling = asyncio.create_task(world.rescale(3))
    await asyncio.sleep(0.1)
    assert not rescaling.done()  # the old owner waits for the payment to be recorded
    release.set()
    await asyncio.wait_for(rescaling, 2)
    settled = await asyncio.wait_for(paying, 5)
    assert isinstance(settled, PixSettled) and settled.code in ("paid", "already-settled")
    await until(lambda: world.row(oid)["status"] == "confirmed")
    assert world.calls["pix_paid", oid] == 1 and world.calls["commit"] == 1
    assert world.holds == {} and world.overlaps == 0


async def test_cancel_and_operator_calls_follow_the_order_to_its_new_owner(worlds):
    world = worlds(3)
    a, b = orders_moving(3, 1, 2)
    stale = OrderClient(world.directory())
    for oid in (a, b):
        assert (await checkout(stale, oid, world)).order["status"] == "confirmed"
    await world.rescale(1)
    assert stale.directory.epoch(KIND) == 0
    cancelled = await stale.cancel(a, f"u-{a}")
    assert isinstance(cancelled, OrderReply) and cancelled.order["status"] == "cancelled"
    shipped = await stale.operate(b, "ship", "BR123")
    assert isinstance(shipped, OrderReply) and shipped.order["status"] == "shipped"
    assert (await stale.get(a)).order["status"] == "cancelled"  # type: ignore[union-attr]
    assert stale.directory.epoch(KIND) == 1
    assert world.calls["refund", a] == 1 and world.units_sold() == 3  # a's units went back
    assert {world.row(a)["status"], world.row(b)["status"]} == {"cancelled", "shipped"}


# --- checkouts while the orders rescale ---------------------------------------------------------


async def test_every_checkout_ends_once_while_orders_rescale_2_3_1(worlds):
    """Shoppers check out through their own, soon stale, clients while the orders move
    2 -> 3 -> 1: every checkout is answered confirmed, each order charged, held and committed
    exactly once, no saga ever ran on two shards at once, sagas were stopped mid-way."""
    world = worlds(2)
    clients = [OrderClient(world.directory()) for _ in range(8)]
    answers: dict[str, Any] = {}
    errors: list[str] = []
    stop = asyncio.Event()
    counter = iter(range(1_000_000))

    async def shopper(client: OrderClient) -> None:
        while not stop.is_set():
            oid = f"o{next(counter)}"
            try:
                answers[oid] = await checkout(client, oid, world)
            except Exception as exc:
                errors.append(f"{oid}: {type(exc).__name__}: {exc}")

    async def answered(count: int) -> None:
        """Until ``count`` checkouts are answered (by count, not time: a busy box is slow)."""
        deadline = asyncio.get_running_loop().time() + 60
        while len(answers) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(shopper(c)) for c in clients]
    await answered(10)
    handoffs = []
    for target, count in ((3, 25), (1, 41)):
        handoffs.append(await world.rescale(target))
        await answered(count)
    stop.set()
    await asyncio.gather(*tasks)

    assert errors == [], errors[:3]
    assert len(answers) > 40 and all(h.moved_keys > 0 for h in handoffs), handoffs
    statuses = Counter(
        r.order["status"] if isinstance(r, OrderReply) else r.code for r in answers.values()
    )
    assert statuses == {"confirmed": len(answers)}, statuses
    for oid in answers:
        assert world.calls["charge", oid] == 1 and world.calls["reserve", oid] == 1, oid
        assert world.charges[oid] == Charge("succeeded", f"pi_{oid}", 2500 + 1000, "BRL", None)
    assert world.calls["commit"] == len(answers) and world.units_sold() == 3 * len(answers)
    assert world.holds == {} and world.overlaps == 0
    assert sum(s.sagas_handed_over for s in world.shells.values()) > 0  # stopped mid-saga
    await ShardOps(world.directory()).drain_all((KIND,))
    assert all(world.row(oid)["status"] == "confirmed" for oid in answers)
    only = shard_name(KIND, 0)
    for name, shell in world.shells.items():
        assert name == only or not shell.states  # the others were handed everything over
