"""The order shard survives being killed mid-webhook and LRU eviction mid-saga (Ray forbidden).

As in ``test_order_shell``: order shells over one in-memory store and pool, the saga's
in-memory fakes (``test_saga``), a fake clock. A kill is a shell whose tasks are cancelled
where they stand and which is never drained (Ray killed the process: only the store and
the outside world remain); its restart is a fresh shell over the same store and world.

The Pix webhook goes through the real ``PaymentsAdapter`` and ``PixGateway.mark_paid``
over a pool that holds the ``payments`` rows in memory, so the gateway's answer to a
repeated payment is the one the shard reads in production. The PSP is the real sandbox
(``cluster.pix_sandbox.Sandbox``) served in this process on a loopback port, on the test's
clock: the gateway asks it about a charge at the expiry over HTTP, as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import actors.order.actor as order_actor
from actors.messages import Rejected
from actors.order.actor import OrderShardImpl
from actors.order.model import (
    Ack,
    CartLine,
    OrderReply,
    PixCharge,
    PixExpired,
    PixPaid,
    PixSettled,
)
from cluster.adapters.order_ports import PaymentsAdapter
from cluster.adapters.pix_gateway import txid_for
from cluster.pix_sandbox import Sandbox
from tests.unit.test_order_shell import CARD, PIX, Harness
from tests.unit.test_saga import Clock, Fakes, setup


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def kill(h: Harness, shell: OrderShardImpl, *calls: asyncio.Task[Any]) -> None:
    """Ray kills the shard: every task of it stops where it stands, nothing is flushed."""
    tasks = [*calls, *shell._background, *shell._tasks.values()]
    if shell.flusher._task is not None:
        tasks.append(shell.flusher._task)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    h.shells.remove(shell)  # never drained


class PaymentRows:
    """The Pix ``payments`` rows behind an asyncpg-shaped pool: the statements of
    ``PixGateway.mark_paid`` and ``PixGateway.expire`` (a conditional UPDATE of a pending
    row, then the row as it is). Each statement is atomic, as a row lock makes it."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.recorded = 0  # rows moved to ``succeeded``
        self.expired = 0  # rows moved to ``declined`` (expired)
        self.overdue: set[str] = set()  # rows older than the gateway's ``give_up_after_s``

    async def fetchval(self, sql: str, key: str, provider: str, *amount: int) -> int | None:
        row = self.rows.get(key)
        if row is None or (row["provider"], row["status"]) != (provider, "pending"):
            return None
        if sql.startswith("UPDATE payments SET status = 'succeeded'"):
            if row["amount"] != amount[0]:
                return None
            row["status"] = "succeeded"
            self.recorded += 1
            return 1
        assert sql.startswith("UPDATE payments SET status = 'declined', decline_code = 'expired'")
        row["status"], row["decline_code"] = "declined", "expired"
        self.expired += 1
        return 1

    async def fetchrow(self, sql: str, key: str, provider: str, *_: Any) -> dict[str, Any] | None:
        assert sql.startswith("SELECT status, amount"), sql
        row = self.rows.get(key)
        if row is None or row["provider"] != provider:
            return None
        return {"decline_code": None, "overdue": key in self.overdue, **row}


class PixWorld(Fakes):
    """The fakes of ``test_saga``, with the Pix webhook and the expiry settled by the real
    adapter and gateway, and the charges kept by the real PSP sandbox (``start``: served on
    a loopback port; its webhooks go nowhere, so every delivery is lost);
    ``die_after_gateway`` hangs the webhook once the gateway has answered (the shard is
    killed there, before the order records the payment); ``before_gateway`` /
    ``after_gateway`` hold it before / after the gateway's answer; ``psp_down`` makes the
    PSP answer 503 to everything."""

    def __init__(self, state: Path) -> None:
        super().__init__(Clock())
        base = setup()
        self.on_hand, self.carts = base.on_hand, base.carts
        self.payments = PaymentRows()
        self.die_after_gateway = False
        self.before_gateway, self.after_gateway = asyncio.Event(), asyncio.Event()
        self.before_gateway.set()
        self.after_gateway.set()
        self.gateway_answered = asyncio.Event()
        self.psp_down = False
        self.psp_delay_s = 0.0  # each PSP answer waits this long (a slow or hanging PSP)
        self.psp_in_flight = self.psp_most_in_flight = 0
        self.sandbox = Sandbox(
            state,
            b"unit-test-secret",
            "Agora",
            "Sao Paulo",
            "pix@agora.example",
            retry_base_s=0.001,
            clock=lambda: self.clock.now / 1000,
        )
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.psp_url = ""

    async def start(self) -> None:
        @web.middleware
        async def down(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.psp_down:
                return web.json_response({"error": "down"}, status=503)
            self.psp_in_flight += 1
            self.psp_most_in_flight = max(self.psp_most_in_flight, self.psp_in_flight)
            try:
                await asyncio.sleep(self.psp_delay_s)
                return await handler(request)
            finally:
                self.psp_in_flight -= 1

        app = self.sandbox.app()
        app.middlewares.append(down)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.psp_url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()

        async def open_pool() -> PaymentRows:
            return self.payments

        self.adapter = PaymentsAdapter(
            open_pool,
            self.clock,
            stripe_api_base="http://127.0.0.1:9",
            stripe_api_key="unused",
            pix_api_base=self.psp_url,
            pix_expiry_s=900,
            webhook_url="http://127.0.0.1:9/v1/payments/webhooks/pix",
        )

    async def close(self) -> None:
        if self.adapter._pix is not None:
            await self.adapter._pix.aclose()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def pay_at_psp(self, key: str) -> dict[str, Any]:
        """The shopper's bank app pays the charge; the PSP's webhook never arrives."""
        assert self._http is not None
        async with self._http.post(f"{self.psp_url}/v1/charges/{txid_for(key)}/pay") as reply:
            assert reply.status == 200, await reply.text()
            answer: dict[str, Any] = await reply.json()
            return answer

    async def open_pix(self, key: str, amount: int) -> PixCharge:
        charge = await super().open_pix(key, amount)
        self.payments.rows.setdefault(
            key, {"provider": "pix", "status": "pending", "amount": amount}
        )
        assert self._http is not None
        body = {
            "txid": txid_for(key),
            "amount": amount,
            "expires_at": charge.expires_at,
            "webhook_url": "http://127.0.0.1:9/v1/payments/webhooks/pix",
        }
        async with self._http.post(f"{self.psp_url}/v1/charges", json=body) as reply:
            assert reply.status in (200, 201), await reply.text()
        return charge

    async def pix_paid(self, key: str, amount: int) -> bool:
        self.calls["pix_paid", key] += 1
        await self.before_gateway.wait()
        paid = await self.adapter.pix_paid(key, amount)
        self.gateway_answered.set()
        if self.die_after_gateway:
            await asyncio.Event().wait()  # killed here: the answer never reaches the order
        await self.after_gateway.wait()
        return paid

    async def expire_pix(self, key: str, amount: int) -> PixPaid | PixExpired:
        self.calls["expire_pix", key] += 1
        return await self.adapter.expire_pix(key, amount)

    async def void(self, key: str, method: str) -> Ack:
        await super().void(key, method)
        return await self.adapter.void(key, method)  # ``mark_expired``: a no-op once settled


@pytest.fixture
async def harnesses() -> Any:
    made: list[Harness] = []

    def make(fakes: Fakes | None = None, max_keys: int = 1000) -> Harness:
        made.append(Harness(fakes or setup()))
        made[-1].settings.shard_max_keys = max_keys
        return made[-1]

    yield make
    for h in made:
        await h.close()


@pytest.fixture
async def pix_world(tmp_path: Path) -> Any:
    world = PixWorld(tmp_path / "charges.json")
    await world.start()
    yield world
    await world.close()


# --- the Pix webhook across a kill ------------------------------------------------------------


async def test_a_shard_killed_between_the_gateway_and_the_order_confirms_on_the_retry(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway records the payment, then the shard dies before the order does. The PSP
    retries the webhook on the restarted shard: the gateway answers "already recorded, same
    amount" (before, False: read as a wrong amount, the order then expired, money kept), so
    the order records it and is confirmed, paid once; another amount is still refused."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    first = h.shell()
    reply = await first.checkout("o1", "u1", "h", PIX, "user:u1")
    assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"
    total = reply.order["totals"]["total"]

    world.die_after_gateway = True
    webhook = asyncio.create_task(first.pix_paid("o1", total))
    await until(lambda: world.payments.rows["o1"]["status"] == "succeeded")
    await kill(h, first, webhook)
    assert h.store.rows["o1"][0]["step"] == "awaiting"  # the money is in, the order unaware

    world.die_after_gateway = False
    second = h.shell()  # Ray restarts it: the same store, the same gateway
    wrong = await second.pix_paid("o1", total - 1)
    assert isinstance(wrong, Rejected) and wrong.code == "amount-mismatch"
    assert await second.pix_paid("o1", total) == PixSettled("paid", "confirmed")
    assert await second.pix_paid("o1", total) == PixSettled("already-settled", "confirmed")

    world.clock.now += 901_000  # past the charge's expiry: the paid order never expires
    await asyncio.sleep(0.1)
    doc = h.store.rows["o1"][0]
    assert (doc["status"], doc["step"]) == ("confirmed", "done")
    assert world.payments.rows["o1"] == {"provider": "pix", "status": "succeeded", "amount": total}
    assert world.payments.recorded == 1 and world.calls["void", "o1"] == 0
    assert sorted(h.events()) == PAID_EVENTS
    assert world.calls["commit"] == 1 and world.holds == {}
    assert world.on_hand == {"A1": 3, "B1": 4}  # sold once


# What a Pix order paid through its webhook commits (the first test above checks it).
PAID_EVENTS = ["order.awaiting_payment", "order.confirmed", "order.created", "payment.processed"]


async def pix_order(h: Harness, shell: OrderShardImpl) -> int:
    reply = await shell.checkout("o1", "u1", "h", PIX, "user:u1")
    assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"
    return int(reply.order["totals"]["total"])


def assert_confirmed_paid_once(h: Harness, world: PixWorld, total: int) -> None:
    """Confirmed as the webhook confirms: the same events, stock sold once, nothing voided."""
    doc = h.store.rows["o1"][0]
    assert (doc["status"], doc["step"]) == ("confirmed", "done")
    assert doc["payment"]["status"] == "succeeded"
    assert sorted(h.events()) == PAID_EVENTS
    assert world.payments.rows["o1"] == {"provider": "pix", "status": "succeeded", "amount": total}
    assert (world.payments.recorded, world.payments.expired) == (1, 0)
    assert world.calls["void", "o1"] == 0
    assert world.calls["commit"] == 1 and world.holds == {}
    assert world.on_hand == {"A1": 3, "B1": 4}  # sold once


async def test_a_payment_whose_webhook_never_reached_the_order_confirms_at_the_expiry(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway records the payment, the shard dies before the order does, and no retry
    of the webhook ever reaches a live shard. At the charge's expiry the restarted shard asks
    the gateway: paid with the order's amount, so the order records it and is confirmed
    (before, ``mark_expired`` answered False, ignored: expired, stock released, money kept).
    A webhook retried after that is answered "already settled"."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    first = h.shell()
    total = await pix_order(h, first)

    world.die_after_gateway = True
    webhook = asyncio.create_task(first.pix_paid("o1", total))
    await asyncio.wait_for(world.gateway_answered.wait(), 3)
    await kill(h, first, webhook)
    world.die_after_gateway = False

    second = h.shell()  # restarted; the PSP's retries all went to the dead shard
    await asyncio.sleep(0.05)
    assert h.store.rows["o1"][0]["step"] == "awaiting"  # not expired yet: nothing asked
    assert world.calls["expire_pix", "o1"] == 0
    world.clock.now += 901_000
    await until(lambda: h.store.rows["o1"][0]["step"] in ("done", "compensating"))
    await until(lambda: "o1" not in second._tasks)
    assert_confirmed_paid_once(h, world, total)
    assert await second.pix_paid("o1", total) == PixSettled("already-settled", "confirmed")
    assert world.payments.recorded == 1


async def test_a_webhook_racing_the_expiry_gives_one_outcome_the_payment(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's gateway call wins the row; before its answer reaches the order the
    expiry sweep runs: the gateway answers it paid, so the order is confirmed, once; the
    webhook then finds it settled (before: expired while the money was recorded)."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    total = await pix_order(h, shell)

    world.after_gateway.clear()
    webhook = asyncio.create_task(shell.pix_paid("o1", total))
    await asyncio.wait_for(world.gateway_answered.wait(), 3)
    world.clock.now += 901_000
    await until(lambda: world.calls["expire_pix", "o1"] == 1)
    await until(lambda: h.store.rows["o1"][0]["step"] in ("done", "compensating"))
    world.after_gateway.set()
    assert await asyncio.wait_for(webhook, 5) == PixSettled("paid", "confirmed")
    await until(lambda: "o1" not in shell._tasks)
    assert_confirmed_paid_once(h, world, total)


async def test_a_webhook_racing_the_expiry_gives_one_outcome_the_expiry(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expiry wins the row while the webhook is on its way to the gateway: the charge is
    declined, the order expires (voided, stock released) and the webhook, refused by the
    gateway, finds the order settled: nothing is recorded paid."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    total = await pix_order(h, shell)

    world.before_gateway.clear()
    webhook = asyncio.create_task(shell.pix_paid("o1", total))
    await until(lambda: world.calls["pix_paid", "o1"] == 1)
    world.clock.now += 901_000
    await until(lambda: h.store.rows["o1"][0]["status"] == "failed")
    world.before_gateway.set()
    assert await asyncio.wait_for(webhook, 5) == PixSettled("already-settled", "failed")
    doc = h.store.rows["o1"][0]
    assert doc["failure"]["code"] == "payment-expired"
    assert world.payments.rows["o1"]["status"] == "declined"
    assert (world.payments.recorded, world.payments.expired) == (0, 1)
    assert world.calls["commit"] == 0 and world.holds == {}
    assert world.on_hand == {"A1": 5, "B1": 5}
    assert "order.confirmed" not in h.events()


async def test_another_amount_paid_is_still_refused_and_the_order_expires(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook with another amount is refused (the row stays pending) and the order
    expires at its time, as before: the gateway declines the charge (operators refund the
    shopper through the PSP)."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    total = await pix_order(h, shell)
    wrong = await shell.pix_paid("o1", total + 1)
    assert isinstance(wrong, Rejected) and wrong.code == "amount-mismatch"
    world.clock.now += 901_000
    await until(lambda: h.store.rows["o1"][0]["status"] == "failed")
    assert h.store.rows["o1"][0]["failure"]["code"] == "payment-expired"
    assert world.payments.rows["o1"]["status"] == "declined"
    assert (world.payments.recorded, world.payments.expired) == (0, 1)


# --- a payment the gateway never heard of (every webhook lost) ---------------------------------


async def test_a_payment_whose_every_webhook_was_lost_confirms_at_the_expiry(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shopper pays at the PSP and no webhook ever reaches us: the gateway's row is
    still pending at the expiry. The gateway asks the PSP, which says paid with the order's
    amount: recorded, and the order is confirmed (before: declined and expired, stock
    released, the money kept at the PSP)."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    total = await pix_order(h, shell)
    assert await world.pay_at_psp("o1") == {"status": "paid", "webhook_status": None}
    assert world.payments.rows["o1"]["status"] == "pending"

    world.clock.now += 901_000
    await until(lambda: h.store.rows["o1"][0]["step"] in ("done", "compensating"))
    await until(lambda: "o1" not in shell._tasks)
    assert_confirmed_paid_once(h, world, total)
    assert world.calls["pix_paid", "o1"] == 0  # no webhook: the expiry found it
    assert await shell.pix_paid("o1", total) == PixSettled("already-settled", "confirmed")


async def test_the_psp_unreachable_at_the_expiry_keeps_the_order_until_it_answers(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paid at the PSP, every webhook lost, and the PSP down at the expiry: the order is
    not expired (its charge may have been paid), every sweep asks again; once the PSP
    answers, the payment is found and the order confirmed (before: expired at once)."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    total = await pix_order(h, shell)
    await world.pay_at_psp("o1")

    world.psp_down = True
    world.clock.now += 901_000
    await until(lambda: world.calls["expire_pix", "o1"] >= 3)
    doc = h.store.rows["o1"][0]
    assert (doc["status"], doc["step"]) == ("awaiting_payment", "awaiting")
    assert world.payments.rows["o1"]["status"] == "pending"
    assert world.calls["void", "o1"] == 0 and world.holds != {}

    world.psp_down = False
    await until(lambda: h.store.rows["o1"][0]["step"] in ("done", "compensating"))
    await until(lambda: "o1" not in shell._tasks)
    assert_confirmed_paid_once(h, world, total)


async def test_the_psp_unreachable_past_the_limit_expires_the_order_anyway(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unpaid charge whose PSP stays down: the order waits while the charge's row is
    younger than the gateway's ``give_up_after_s``, then expires (an error is logged)."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    h = harnesses(world)
    shell = h.shell()
    await pix_order(h, shell)

    world.psp_down = True
    world.clock.now += 901_000
    await until(lambda: world.calls["expire_pix", "o1"] >= 3)
    assert h.store.rows["o1"][0]["step"] == "awaiting"
    assert world.payments.rows["o1"]["status"] == "pending"

    world.payments.overdue.add("o1")
    await until(lambda: h.store.rows["o1"][0]["status"] == "failed")
    assert h.store.rows["o1"][0]["failure"]["code"] == "payment-expired"
    assert world.payments.rows["o1"]["status"] == "declined"
    assert (world.payments.recorded, world.payments.expired) == (0, 1)
    assert world.calls["commit"] == 0 and world.holds == {}


async def test_a_slow_psp_is_asked_about_every_expiring_order_at_once(
    pix_world: PixWorld, harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three unpaid Pix orders expire in the same sweep while the PSP takes 0.3 s per answer:
    the sweep asks about them together (before: one after another, so a PSP that hangs cost
    one timeout per waiting order per sweep), and each still expires once."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    world = pix_world
    for user in ("u2", "u3"):
        world.carts[f"user:{user}"] = [CartLine("B1", "Book", 500, 1)]
    h = harnesses(world)
    shell = h.shell()
    for order_id, user in (("o1", "u1"), ("o2", "u2"), ("o3", "u3")):
        reply = await shell.checkout(order_id, user, "h", PIX, f"user:{user}")
        assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"

    world.psp_delay_s = 0.3
    world.psp_most_in_flight = 0
    world.clock.now += 901_000
    await until(
        lambda: all(h.store.rows[o][0]["status"] == "failed" for o in ("o1", "o2", "o3")),
        timeout=10,
    )
    assert world.psp_most_in_flight == 3
    assert (world.payments.recorded, world.payments.expired) == (0, 3)
    assert all(world.calls["expire_pix", o] == 1 for o in ("o1", "o2", "o3"))
    assert world.holds == {} and world.on_hand == {"A1": 5, "B1": 5}


# --- LRU eviction while the shard works on an order ---------------------------------------------


async def test_an_order_whose_saga_is_between_steps_is_never_evicted(harnesses: Any) -> None:
    """One resident key at most: while the charge is under way (the order clean, its last
    step committed) other keys load and the LRU map overflows. The order stays (before, it
    was evicted and every later step was written for no resident state: the store kept
    ``reserved``); once its saga has ended it is evictable again."""
    world = setup()
    h = harnesses(world, max_keys=1)
    entered, release = asyncio.Event(), asyncio.Event()
    charge = world.charge

    async def slow_charge(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await charge(*args)

    world.charge = slow_charge  # type: ignore[method-assign]
    shell = h.shell()
    checkout = asyncio.create_task(shell.checkout("o1", "u1", "h", CARD, "user:u1"))
    await asyncio.wait_for(entered.wait(), 2)
    assert not shell.flusher.tracker.is_dirty("o1")  # nothing keeps it but its saga
    for key in ("x1", "x2", "x3"):
        assert await shell.get(key) is None
    assert "o1" in shell.states and shell.evictions == 3

    release.set()
    reply = await asyncio.wait_for(checkout, 5)
    assert isinstance(reply, OrderReply) and reply.order["status"] == "confirmed"
    doc = h.store.rows["o1"][0]
    assert (doc["status"], doc["step"]) == ("confirmed", "done")
    assert world.calls["charge", "o1"] == 1 and world.on_hand == {"A1": 3, "B1": 4}

    await until(lambda: "o1" not in shell._tasks)
    await shell.get("x4")
    assert "o1" not in shell.states  # finished: an ordinary key again
    assert (await shell.get("o1")).order["status"] == "confirmed"  # type: ignore[union-attr]


async def test_an_order_is_not_evicted_between_its_first_commit_and_its_saga(
    harnesses: Any,
) -> None:
    """One resident key at most: another key loads right after the checkout's first durable
    commit (the order clean, no saga task yet). The order stays resident, so the checkout
    answers the order its saga finished (before, it was evicted there: the saga ran on a
    copy reloaded from the store and the checkout answered its own stale copy, ``pending``,
    for an order that was confirmed)."""
    world = setup()
    h = harnesses(world, max_keys=1)
    shell = h.shell()
    upsert = h.store.upsert
    loads: list[asyncio.Task[Any]] = []

    async def upsert_then_load_another(conn: Any, rows: list[tuple[str, Any, int]]) -> None:
        await upsert(conn, rows)
        if not loads and any(key == "o1" for key, _doc, _version in rows):
            # Runs before the checkout resumes from its commit (scheduled earlier).
            loads.append(asyncio.create_task(shell.get("x1")))

    h.store.upsert = upsert_then_load_another  # type: ignore[method-assign]
    reply = await asyncio.wait_for(shell.checkout("o1", "u1", "h", CARD, "user:u1"), 5)
    await asyncio.gather(*loads)
    assert loads, "the second key was never loaded"
    assert isinstance(reply, OrderReply) and reply.order["status"] == "confirmed", reply
    doc = h.store.rows["o1"][0]
    assert (doc["status"], doc["step"]) == ("confirmed", "done")
    assert world.calls["charge", "o1"] == 1


async def test_an_order_awaiting_its_pix_payment_stays_resident_and_expires(
    harnesses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expiry sweep walks the resident orders: an awaiting Pix order pushed out of the
    LRU map would hold its stock until the shard restarted. It stays, and expires."""
    monkeypatch.setattr(order_actor, "EXPIRY_SCAN_S", 0.01)
    h = harnesses(max_keys=1)
    shell = h.shell()
    reply = await shell.checkout("o1", "u1", "h", PIX, "user:u1")
    assert isinstance(reply, OrderReply) and reply.order["status"] == "awaiting_payment"
    await until(lambda: "o1" not in shell._tasks)
    for key in ("x1", "x2", "x3"):
        await shell.get(key)
    assert "o1" in shell.states

    h.fakes.clock.now += 901_000
    await until(lambda: h.store.rows["o1"][0]["status"] == "failed")
    assert h.store.rows["o1"][0]["failure"]["code"] == "payment-expired"
    assert h.fakes.calls["void", "o1"] == 1 and h.fakes.holds == {}
