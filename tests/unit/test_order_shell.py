"""The order shard's shell (``OrderShardImpl``) runs its sagas with Ray forbidden.

The ports are the in-memory fakes of ``test_saga`` (idempotent by key, counting
every call); the store and pool are the in-memory ones of
``test_shell_in_memory``, plus the one query the shell makes itself (the
unfinished orders it resumes on start). The clock is fake; the event loop is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

import actors.order.actor as order_actor
from actors.messages import Rejected
from actors.order.actor import OrderShardImpl, call_port
from actors.order.model import Order, OrderReply, PixSettled
from actors.shard import ShardEnv
from tests.unit.test_saga import ADDRESS, Fakes, setup
from tests.unit.test_shell_in_memory import MemoryConnection, MemoryPool, MemoryStore

CARD = {
    "shipping_address": ADDRESS,
    "shipping_method": "standard",
    "payment": {"method": "card", "token": "pm_card_visa"},
}
PIX = {**CARD, "payment": {"method": "pix"}}


class OrderConnection(MemoryConnection):
    def __init__(self, outbox: list[tuple[Any, ...]], store: MemoryStore) -> None:
        super().__init__(outbox)
        self.store = store

    async def fetch(self, sql: str) -> list[dict[str, str]]:
        """``SELECT order_id FROM orders WHERE step NOT IN ('done', 'review')``, in memory."""
        assert "step NOT IN ('done', 'review')" in sql
        return [
            {"order_id": key}
            for key, (doc, _version) in self.store.rows.items()
            if doc["step"] not in ("done", "review")
        ]


class OrderPool(MemoryPool):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store

    @contextlib.asynccontextmanager
    async def acquire(self) -> Any:
        yield OrderConnection(self.outbox, self.store)


class Harness:
    """One shell (and its restarts) over one store, pool, clock and set of fakes."""

    def __init__(self, fakes: Fakes, deadline_s: float = 30, wait_s: float = 5.0) -> None:
        self.fakes = fakes
        self.store = MemoryStore()
        self.pool = OrderPool(self.store)
        self.settings = SimpleNamespace(
            flush_batch_size=100,
            flush_interval_ms=0,  # the fake clock barely moves: flush at every tick
            shard_max_keys=1000,
            events_tenant="agora",
            events_namespace="events",
            saga_step_deadline_s=deadline_s,
            checkout_wait_s=wait_s,
        )
        self.shells: list[OrderShardImpl] = []

    def shell(self, directory: Any = None) -> OrderShardImpl:
        async def open_pool() -> OrderPool:
            return self.pool

        env = ShardEnv(
            settings=self.settings,
            store=self.store,
            open_pool=open_pool,
            clock=self.fakes.clock,
            ports=self.fakes.ports(),
            directory=directory,
        )
        shell = OrderShardImpl("agora:order:0", env)
        self.shells.append(shell)
        return shell

    def events(self) -> list[str]:
        return [row[3] for row in self.pool.outbox]

    async def close(self) -> None:
        for shell in self.shells:
            await shell.drain()
            for task in [*shell._background, *shell._tasks.values()]:
                task.cancel()
            await asyncio.gather(*shell._background, return_exceptions=True)


@pytest.fixture
async def harness() -> Any:
    made: list[Harness] = []

    def make(fakes: Fakes | None = None, **kwargs: Any) -> Harness:
        made.append(Harness(fakes or setup(), **kwargs))
        return made[-1]

    yield make
    for h in made:
        await h.close()


async def test_checkout_confirms_durably_and_a_retry_replays_without_charging_again(
    harness: Any,
) -> None:
    h = harness()
    shell = h.shell()
    assert await shell.get("o1") is None
    reply = await shell.checkout("o1", "u1", "hash-1", CARD, "user:u1")
    assert isinstance(reply, OrderReply) and reply.order["status"] == "confirmed"
    assert reply.order["totals"]["total"] == 2 * 1000 + 500 + 1000
    doc, _version = h.store.rows["o1"]
    assert doc["status"] == "confirmed" and doc["step"] == "done"  # persisted step by step
    assert h.fakes.carts["user:u1"] == [] and h.fakes.on_hand == {"A1": 3, "B1": 4}
    assert sorted(h.events()) == ["order.confirmed", "order.created", "payment.processed"]

    again = await shell.checkout("o1", "u1", "hash-1", CARD, "user:u1")
    assert again == await shell.get("o1") and again.order["status"] == "confirmed"
    assert h.fakes.calls["charge", "o1"] == 1 and h.fakes.calls["reserve", "o1"] == 1
    other_body = await shell.checkout("o1", "u1", "hash-2", CARD, "user:u1")
    assert isinstance(other_body, Rejected) and other_body.code == "idempotency-key-reused"
    other_user = await shell.checkout("o1", "u2", "hash-1", CARD, "user:u2")
    assert isinstance(other_user, Rejected) and other_user.code == "not-found"


async def test_a_restarted_shard_resumes_unfinished_sagas_of_its_own_keys(harness: Any) -> None:
    h = harness()
    for order_id, step in (("o1", None), ("o2", None), ("done", "done")):
        order = Order(order_id)
        order.create("u1", "h", CARD, "user:u1", h.fakes.clock())
        if step:
            order.step = step
        h.store.rows[order_id] = (order.to_doc(), order.version)

    directory = SimpleNamespace(shard_for=lambda kind, key: f"agora:{kind}:{int(key == 'o2')}")
    shell = h.shell(directory)  # the constructor starts the resume, no call needed
    for _ in range(500):
        if h.store.rows["o1"][0]["step"] == "done":
            break
        await asyncio.sleep(0.01)
    assert h.store.rows["o1"][0]["status"] == "confirmed"
    assert h.store.rows["o2"][0]["step"] == "created"  # another shard's order: left alone
    assert h.fakes.calls["price"] == 1 and h.fakes.calls["warm"] == 1
    assert "done" not in shell.states  # a finished order is not even loaded


async def test_a_failing_early_step_retries_then_gives_up_into_an_explained_failure(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = setup()
    calls = {"n": 0}
    price = fakes.price

    async def flaky(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("pricing restarting")
        return await price(*args)

    monkeypatch.setattr(fakes, "price", flaky)
    h = harness(fakes)
    reply = await h.shell().checkout("o1", "u1", "h", CARD, "user:u1")
    assert calls["n"] == 2 and reply.order["status"] == "confirmed"  # type: ignore[union-attr]

    down = setup()

    async def unreachable(*_args: Any) -> Any:
        raise ConnectionError("pricing down")

    monkeypatch.setattr(down, "price", unreachable)
    h2 = harness(down, deadline_s=0)  # past the deadline at the first failure
    failed = await h2.shell().checkout("o2", "u1", "h", CARD, "user:u1")
    assert isinstance(failed, OrderReply) and failed.order["status"] == "failed"
    assert "pricing down" in str(failed.order["failure"])
    assert down.calls["charge", "o2"] == 0 and down.holds == {}


async def test_pix_waits_then_a_payment_settles_it_once(harness: Any) -> None:
    h = harness()
    shell = h.shell()
    missing = await shell.pix_paid("nope", 1)
    assert isinstance(missing, Rejected) and missing.code == "not-found"
    reply = await shell.checkout("o1", "u1", "h", PIX, "user:u1")
    assert reply.order["status"] == "awaiting_payment"  # type: ignore[union-attr]
    total = reply.order["totals"]["total"]  # type: ignore[union-attr]
    assert len(h.fakes.holds) == 2

    async def wrong_amount(key: str, amount: int) -> bool:
        return amount == total

    h.fakes.pix_paid = wrong_amount  # type: ignore[method-assign]
    mismatch = await shell.pix_paid("o1", total - 1)
    assert isinstance(mismatch, Rejected) and mismatch.code == "amount-mismatch"
    assert (await shell.get("o1")).order["status"] == "awaiting_payment"  # type: ignore[union-attr]
    assert await shell.pix_paid("o1", total) == PixSettled("paid", "confirmed")
    assert await shell.pix_paid("o1", total) == PixSettled("already-settled", "confirmed")
    assert h.store.rows["o1"][0]["status"] == "confirmed" and h.fakes.holds == {}


async def test_an_unpaid_pix_order_expires_voids_and_releases(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    h = harness()
    shell = h.shell()
    await shell.checkout("o1", "u1", "h", PIX, "user:u1")
    await asyncio.sleep(0.05)
    assert h.store.rows["o1"][0]["status"] == "awaiting_payment"  # not expired yet
    h.fakes.clock.now += 901_000  # the Pix charge lives 900 s
    for _ in range(300):
        if h.store.rows["o1"][0]["status"] == "failed":
            break
        await asyncio.sleep(0.01)
    doc = h.store.rows["o1"][0]
    assert doc["status"] == "failed" and doc["failure"]["code"] == "payment-expired"
    assert h.fakes.calls["void", "o1"] == 1 and h.fakes.holds == {}
    late = await shell.pix_paid("o1", doc["totals"]["total"])
    assert late == PixSettled("already-settled", "failed")


async def test_cancel_refunds_and_restocks_and_operators_ship(harness: Any) -> None:
    h = harness()
    shell = h.shell()
    for order_id in ("o1", "o2"):
        h.fakes.carts["user:u1"] = list(setup().carts["user:u1"])
        await shell.checkout(order_id, "u1", order_id, CARD, "user:u1")
    assert h.fakes.on_hand == {"A1": 1, "B1": 3}

    stranger = await shell.cancel("o1", "u2")
    assert isinstance(stranger, Rejected) and stranger.code == "not-found"
    cancelled = await shell.cancel("o1", "u1")
    assert isinstance(cancelled, OrderReply) and cancelled.order["status"] == "cancelled"
    assert h.fakes.calls["refund", "o1"] == 1 and h.fakes.on_hand == {"A1": 3, "B1": 4}
    assert (await shell.cancel("o1", "u1")).order["status"] == "cancelled"  # type: ignore[union-attr]
    assert h.fakes.calls["refund", "o1"] == 1  # idempotent
    assert h.store.rows["o1"][0]["status"] == "cancelled"

    shipped = await shell.operate("o2", "ship", "tracking BR123")
    assert isinstance(shipped, OrderReply) and shipped.order["status"] == "shipped"
    too_late = await shell.cancel("o2", "u1")
    assert isinstance(too_late, Rejected)
    unknown = await shell.operate("nope", "ship")
    assert isinstance(unknown, Rejected) and unknown.code == "not-found"


async def test_erasure_drops_the_address_but_keeps_the_order(harness: Any) -> None:
    h = harness()
    shell = h.shell()
    await shell.erase_personal("nope")  # no order: nothing stored
    assert "nope" not in h.store.rows
    await shell.checkout("o1", "u1", "h", CARD, "user:u1")
    await shell.erase_personal("o1")
    doc = h.store.rows["o1"][0]
    assert doc["request"]["shipping_address"] == {"country": "BR", "erased": True}
    assert doc["status"] == "confirmed" and ADDRESS["line1"] not in str(doc)


async def test_call_port_refuses_a_step_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="no port call"):
        await call_port(setup().ports(), object())  # type: ignore[arg-type]
