"""The ``OrderShard`` actor: the thin shell that runs checkout sagas (``actors.order.saga``).

For each unfinished order it loops: ``step = next_step(order)``; call the one
port (``ShardEnv.ports``, built by ``cluster.bootstrap``) under a deadline;
``events = apply(order, step, result, now)``; wait for the durable commit of
the new state and its events; repeat until the order is finished or waits
(Pix). A failing call backs off (capped, jittered) and, for the steps before
the money is taken, gives up after ``saga_step_deadline_s`` and compensates.

A (re)started shard resumes every unfinished saga it owns at once, from a task
started in the constructor (Ray runs an async actor's constructor on its event
loop), not on its first call. The order id is derived from the user and the
``Idempotency-Key``, so a retry reaches the same order and never charges twice.

Orders move between shards live (``agora scale order=N``, ``actors.shard``). When
the ring gives an order away, its saga stops at the next step boundary: a port call
under way finishes and its step commits, a backoff pause is cut short, no step
starts (``_hand_over``); only then is the order flushed and dropped and
``adopt_ring`` answered, so the new owner, which loads it once the handoff has
ended, never runs a step the old owner is still running. Callers waiting on the
order (a checkout awaiting its outcome, cancel, operator actions, the Pix webhook)
are answered "moved" and ``actors.clients.OrderClient`` asks the new owner, which
resumes the saga from its persisted step (the restart path: ``_resume_unfinished``,
also run once a handoff has ended) and answers them. Mutations check ownership with
no await before they change the order (as every shard kind does), or, when they must
await between reading and writing it (the Pix webhook's PSP call), hold the handoff
until they are done (``_change``); the Pix expiry sweep skips orders being handed over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Iterator
from functools import partial
from typing import Any

import ray

from actors.messages import Rejected
from actors.order.model import (
    Order,
    OrderReply,
    PixPaid,
    PixSettled,
    Unavailable,
)
from actors.order.ports import Ports
from actors.order.saga import (
    AwaitPix,
    ChargeCard,
    ClearCart,
    CommitStock,
    GiveUp,
    OpenPix,
    PriceCart,
    RedeemCoupon,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    Restock,
    ScreenFraud,
    Step,
    UnredeemCoupon,
    VoidPayment,
    apply,
    decide_cancel,
    decide_operation,
    is_terminal,
    next_step,
    on_failure,
)
from actors.shard import EnvFactory, KeyMoved, ShardEnv, ShardShell
from streams.events import Envelope

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
EXPIRY_SCAN_S = 2.0
EXPIRY_CONCURRENCY = 16  # expiring orders asked about at once in one sweep


async def call_port(p: Ports, step: Step) -> object:
    """Make the one port call a step names."""
    match step:
        case PriceCart():
            cart = await p.carts.snapshot(step.cart_id)
            return await p.pricing.price(
                cart,
                step.user_id,
                step.shipping_method,
                step.country,
                step.state,
                step.postal_code,
            )
        case ScreenFraud():
            return await p.fraud.screen(
                step.order_id,
                step.user_id,
                step.total,
                step.quantities,
                step.country,
                step.skus,
                step.shipping_method,
            )
        case ReserveStock():
            return await p.stock.reserve(step.order_id, step.lines, step.long_hold)
        case RedeemCoupon():
            return await p.pricing.redeem(step.code, step.user_id, step.order_id)
        case ChargeCard():
            return await p.payments.charge(step.key, step.amount, step.currency, step.token)
        case OpenPix():
            return await p.payments.open_pix(step.key, step.amount)
        case CommitStock():
            return await p.stock.commit(step.lines)
        case ClearCart():
            return await p.carts.clear(step.cart_id)
        case ReleaseStock():
            return await p.stock.release(step.lines)
        case UnredeemCoupon():
            return await p.pricing.unredeem(step.code, step.order_id)
        case RefundPayment():
            return await p.payments.refund(step.key, step.method, step.payment_id, step.amount)
        case VoidPayment():
            return await p.payments.void(step.key, step.method)
        case Restock():
            return await p.stock.restock(step.lines)
    raise ValueError(f"no port call for {step!r}")


class OrderShardImpl(ShardShell[Order]):
    """Owns many orders and runs their sagas; every step is persisted before the next."""

    movable = True  # ``agora scale``: sagas stop at a step boundary and resume on the new owner

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)
        self.ports = self.env.ports
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ring_changed = asyncio.Event()  # set (and replaced) when a handoff begins
        self._changing: dict[str, list[asyncio.Future[None]]] = {}  # see ``_change``
        self._held: collections.Counter[str] = collections.Counter()  # see ``_hold``
        self.sagas_handed_over = 0  # sagas stopped at a step boundary for their new owner
        self._background: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self.deadline_ms = int(getattr(self.settings, "saga_step_deadline_s", 30) * 1000)
        self.wait_s = float(getattr(self.settings, "checkout_wait_s", 8.0))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside an event loop (a unit test): no background work
            return
        self._spawn(loop, self._boot())
        if self.ports is not None:
            # Find the fraud model now, not on the first order (that lookup takes seconds).
            self._spawn(loop, self.ports.fraud.warm())

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def new_state(self, key: str) -> Order:
        return Order(key)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> Order:
        return Order.from_doc(key, doc, version)

    async def _persist(self, order: Order, events: list[Envelope]) -> None:
        self.changed(order.order_id, order, events)
        await self.flusher.durable(order.order_id, order.version)

    async def stats(self) -> dict[str, Any]:
        """The shell's figures plus how fraud screening went (model answers, fallbacks)."""
        figures = await super().stats()
        if self.ports is not None:
            figures["fraud"] = self.ports.fraud.stats()
        figures["sagas_handed_over"] = self.sagas_handed_over
        return figures

    # --- live rescaling -------------------------------------------------------------

    def _gives_away(self, order_id: str) -> bool:
        """The ring this shard follows gives ``order_id`` to another shard."""
        return self.ring is not None and not self.ring.owns(order_id)

    def _pinned(self, order_id: str) -> bool:
        """Never evicted while its saga runs (the task holds the order and writes each step
        through the map), a change awaits a port (``_change``), or it awaits a Pix payment
        (the expiry sweep walks the resident orders): else its next writes would be lost."""
        if order_id in self._tasks or order_id in self._changing or self._held[order_id]:
            return True
        order = self.states.get(order_id)
        return order is not None and order.step == "awaiting"

    def _moved(self, order_id: str) -> KeyMoved:
        assert self.ring is not None
        return KeyMoved(order_id, self.ring.owner(order_id), self.ring.spec)

    def _handoff_wait_s(self) -> float:
        # A gained order waits for its old owner's step under way (a port call, then a commit).
        return max(super()._handoff_wait_s(), CALL_TIMEOUT_S + 10)

    async def _hand_over(self) -> None:
        """Stop the sagas of the orders the new ring gives away, at a step boundary: a step
        under way finishes and commits, a backoff pause ends at once, no new step starts
        (``_run`` checks before each); a change under way (``_change``) ends too. Returns
        once they have all ended, so that ``adopt_ring`` flushes the last state of those
        orders and the new owner resumes from it."""
        woken, self._ring_changed = self._ring_changed, asyncio.Event()
        woken.set()
        leaving = [task for key, task in self._tasks.items() if self._gives_away(key)]
        changes = [f for key, fs in self._changing.items() if self._gives_away(key) for f in fs]
        self.sagas_handed_over += len(leaving)
        if leaving or changes:
            await asyncio.wait([*leaving, *changes])

    @contextlib.contextmanager
    def _hold(self, order_id: str) -> Iterator[None]:
        """An operation on a resident order that answers its view: resident until it has
        answered. Its commit leaves the order clean before its saga task starts; evicted
        there, the saga would run on a copy reloaded from the store while the caller
        answered its own stale one. A handoff does not wait for it (``_change`` does)."""
        self._held[order_id] += 1
        try:
            yield
        finally:
            self._held[order_id] -= 1
            if not self._held[order_id]:
                del self._held[order_id]

    @contextlib.contextmanager
    def _change(self, order_id: str) -> Iterator[None]:
        """A change of an order that awaits (a port call) between reading the order and
        writing it: a handoff of the order waits until it has ended (its write marked)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changing.setdefault(order_id, []).append(done)
        try:
            yield
        finally:
            waiting = self._changing[order_id]
            waiting.remove(done)
            if not waiting:
                del self._changing[order_id]
            done.set_result(None)

    async def adopt_ring(self, epoch: int, shards: int, previous: int | None) -> dict[str, Any]:
        """The shell's handoff; once it has ended, the unfinished orders gained from other
        shards resume here (their old owners stopped them at a step boundary)."""
        report = await super().adopt_ring(epoch, shards, previous)
        if previous is None and not report.get("stale"):
            self._spawn(asyncio.get_running_loop(), self._resume_until_done())
        return report

    # --- resume on (re)start ------------------------------------------------------

    async def _boot(self) -> None:
        """Open the pool, resume every unfinished saga this shard owns, expire Pix charges."""
        await self._resume_until_done()
        await self._expire_loop()

    async def _resume_until_done(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._resume_unfinished()
                return
            except Exception:
                log.exception("could not resume unfinished orders; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _resumes(self, order_id: str) -> bool:
        """Whether this shard owns ``order_id``: by its ring (a ring member), else by the
        directory (a shard made apart owns everything)."""
        if self.ring is not None:
            return self.ring.owns(order_id)
        directory = self.env.directory
        return directory is None or directory.shard_for("order", order_id) == self.name

    async def _resume_unfinished(self) -> None:
        pool = await self._get_pool()  # a ring member loads its ring with the pool
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT order_id FROM orders WHERE step NOT IN ('done', 'review')"
            )  # unfinished sagas and Pix orders waiting for payment
        for row in rows:
            if not self._resumes(row["order_id"]):
                continue
            try:
                order = await self.state(row["order_id"])
            except KeyMoved:
                continue  # the ring changed meanwhile: its new owner resumes it
            if not is_terminal(order):
                self._start(order.order_id)

    async def _expire_loop(self) -> None:
        """Unpaid Pix orders expire: the saga compensates (void, release) and fails them."""
        while True:
            await asyncio.sleep(EXPIRY_SCAN_S)
            gate = asyncio.Semaphore(EXPIRY_CONCURRENCY)
            now = self.clock()
            due = []
            for order in list(self.states.values()):
                if self._gives_away(order.order_id) or self.states.get(order.order_id) is not order:
                    continue  # being handed over (its new owner expires it), or dropped
                pix = (order.payment or {}).get("pix") or {}
                if order.step == "awaiting" and pix.get("expires_at", 0) * 1000 <= now:
                    due.append(order)
            # Several at once: a PSP that hangs costs one call's timeout per sweep, not one
            # per waiting order.
            await asyncio.gather(*(self._expire_quietly(order, gate) for order in due))

    async def _expire_quietly(self, order: Order, gate: asyncio.Semaphore) -> None:
        async with gate:
            with contextlib.suppress(Exception):  # the next sweep asks again
                await self._expire(order)

    async def _expire(self, order: Order) -> None:
        """An awaiting Pix order past its expiry asks the gateway, which settles the charge
        atomically against a racing webhook, and follows the winner: paid with the order's
        amount (its shard killed after the gateway recorded it, no webhook retry since), the
        order records the payment as the webhook would (``PixPaid``: charged, committed,
        confirmed); else it expires (``PixExpired``: void, release). Held like the webhook
        (``_change``): a handoff waits for it."""
        order_id = order.order_id
        with self._change(order_id):
            result = await asyncio.wait_for(
                self.ports.payments.expire_pix(order_id, int(order.totals["total"])),
                CALL_TIMEOUT_S,
            )
            if order.step != "awaiting":
                return  # the webhook recorded it meanwhile (the gateway answered it paid too)
            await self._persist(order, apply(order, AwaitPix(order_id), result, self.clock()))
        self._start(order_id)

    # --- the saga loop ------------------------------------------------------------

    def _start(self, order_id: str) -> asyncio.Task[None]:
        if self._gives_away(order_id):
            raise self._moved(order_id)  # never a saga on two shards: the new owner runs it
        task = self._tasks.get(order_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run(order_id))
            self._tasks[order_id] = task
            task.add_done_callback(partial(self._forget, order_id))
        return task

    def _forget(self, order_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(order_id) is task:
            del self._tasks[order_id]

    async def _run(self, order_id: str) -> None:
        try:
            order = await self.state(order_id)
        except KeyMoved:
            return  # given away before it started: its new owner resumes it
        attempt, first_failure = 0, None
        while (step := next_step(order)) is not None:
            if self._gives_away(order_id):
                return  # a step boundary, the last step committed: the new owner goes on
            try:
                result = await asyncio.wait_for(call_port(self.ports, step), CALL_TIMEOUT_S)
            except Exception as exc:
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                detail = f"{type(exc).__name__}: {exc}"[:300]
                decision = on_failure(
                    step,
                    attempt,
                    first_failure,
                    now,
                    self.deadline_ms,
                    self._random.random(),
                    detail,
                )
                if not isinstance(decision, GiveUp):
                    log.warning(
                        "saga %s step %s failed (%s); retry in %.2fs",
                        order_id,
                        type(step).__name__,
                        detail,
                        decision.delay_s,
                    )
                    attempt += 1
                    await self._pause(order_id, decision.delay_s)
                    continue
                result = Unavailable(decision.detail)
            attempt, first_failure = 0, None
            await self._persist(order, apply(order, step, result, self.clock()))

    async def _pause(self, order_id: str, delay_s: float) -> None:
        """Back off ``delay_s`` before a step is tried again; cut short when a handoff gives
        the order away (nothing is under way: the saga stops there)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay_s
        while not self._gives_away(order_id) and (left := until - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ring_changed.wait(), left)

    async def _settle(self, order_id: str, wait_s: float) -> None:
        """Run the saga (or join it) and wait for it at most ``wait_s``.

        Raises ``KeyMoved`` when a handoff gave the order away meanwhile (its saga stopped
        at a step boundary): the caller asks the new owner, which resumes it and answers.
        """
        task = self._start(order_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        if self._gives_away(order_id):
            raise self._moved(order_id)

    # --- protocol -----------------------------------------------------------------

    async def checkout(
        self,
        order_id: str,
        user_id: str,
        request_hash: str,
        request: dict[str, Any],
        cart_id: str,
    ) -> OrderReply | Rejected:
        """Run (or join, or replay) the saga; answers its view within ``checkout_wait_s``."""
        order = await self.state(order_id)
        with self._hold(order_id):
            if order.step == "new":
                await self._persist(
                    order, order.create(user_id, request_hash, request, cart_id, self.clock())
                )
            elif order.user_id != user_id:
                return Rejected("not-found", "No such order.")
            elif order.request_hash != request_hash:
                return Rejected(
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different request.",
                )
            if not is_terminal(order):
                await self._settle(order_id, self.wait_s)
            return OrderReply(order.view())

    async def get(self, order_id: str) -> OrderReply | None:
        """The order's view, or None."""
        order = await self.state(order_id)
        return None if order.step == "new" else OrderReply(order.view())

    async def pix_paid(self, order_id: str, amount: int) -> PixSettled | Rejected:
        """The PSP says the Pix charge was paid: record it and finish the saga."""
        order = await self.state(order_id)
        if order.step == "new":
            return Rejected("not-found", "No such order.")
        if order.step != "awaiting":
            return PixSettled("already-settled", order.status)
        # The gateway records the payment once; the order records it here too, even if a
        # handoff began meanwhile (it waits for this; "moved" after). A shard killed between
        # the two leaves the gateway's row paid and the order awaiting: the retried webhook is
        # answered True again (paid with this amount before), so the order records it then.
        with self._change(order_id):
            if not await self.ports.payments.pix_paid(order_id, amount):
                if order.step != "awaiting":  # the expiry won the gateway's row meanwhile
                    return PixSettled("already-settled", order.status)
                return Rejected("amount-mismatch", "The paid amount does not match the charge.")
            if order.step == "awaiting":  # re-checked: the expiry may have won while we awaited
                await self._persist(
                    order, apply(order, AwaitPix(order_id), PixPaid(amount), self.clock())
                )
        await self._settle(order_id, self.wait_s)
        return PixSettled("paid", order.status)

    async def cancel(self, order_id: str, user_id: str) -> OrderReply | Rejected:
        """Cancel before shipment: refund the payment and put the stock back."""
        order = await self.state(order_id)
        decided = decide_cancel(order, user_id, self.clock())  # no await before this
        if isinstance(decided, Rejected):
            return decided
        with self._hold(order_id):
            await self._persist(order, decided)
            await self._settle(order_id, self.wait_s)
            return OrderReply(order.view())

    async def operate(
        self, order_id: str, action: str, note: str | None = None
    ) -> OrderReply | Rejected:
        """Operator actions: ``ship``, ``refund``, ``approve`` or ``reject`` (fraud review)."""
        order = await self.state(order_id)
        decided = decide_operation(order, action, note, self.clock())  # no await before this
        if isinstance(decided, Rejected):
            return decided
        with self._hold(order_id):
            await self._persist(order, decided)
            await self._settle(order_id, self.wait_s)
            return OrderReply(order.view())

    async def erase_personal(self, order_id: str) -> None:
        """Drop the shopper's address from the order (GDPR erasure), durably."""
        order = await self.state(order_id)
        if order.step == "new":
            return
        order.erase_personal(self.clock())
        await self._persist(order, [])

    async def drain(self) -> int:
        """Final flush before a graceful stop (running sagas resume after restart)."""
        for task in list(self._tasks.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 5)
        return await super().drain()


OrderShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(OrderShardImpl)  # type: ignore[call-overload]
