"""The ledger actor (detached singleton ``agora:ledger``): order hashes in, anchored roots out.

Two loops run in the actor, both restarted with it:

* the feed: an idempotent Pulsar consumer (subscription ``ledger``) of the
  orders topic. For each ``order.confirmed`` it records the order's leaf in
  ``ledger_leaves`` in the same transaction as the processed event id, and
  only then acknowledges (at-least-once in, exactly one leaf per order).
  Other ports add leaves the same way: ``submit_leaf`` (the audit log's chain
  head, one leaf per audit batch).
* the anchorer: closes a batch (``BatchPolicy``: N leaves or T seconds, one
  unanchored batch at a time), then for the oldest unanchored batch signs
  ``anchor(batchId, root, count)``, records nonce, tx hash and the signed bytes
  (status ``sending``, committed) BEFORE sending, sends, and waits for the
  receipt with the configured confirmations before marking it ``anchored``.

Crash safety. A restarted actor finds the batch where it was: ``closed``
(nothing sent: it checks ``roots(batchId)`` first, then signs), or
``sending`` (it re-sends the same signed bytes, which is idempotent, and looks
at ``roots(batchId)``, the receipt and the account's mined nonce to tell
"mined", "still pending" and "nonce used by something else, sign again").
The contract refuses a second anchor of a batch id, and a leaf belongs to
one batch, so each leaf is anchored exactly once. A chain that is down only
stops the anchorer (backlog grows; the feed keeps recording; checkout never
waits on the ledger).

The ledger imports only ``streams`` of ours; the command line passes a
``LedgerConfig`` (plain values) when it creates the actor.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import ray

from ledger import store
from ledger.batching import BatchPolicy
from ledger.chain import Chain, ChainUnavailable, node_reachable
from ledger.merkle import LeafDataError, leaf_data_for, leaf_hash, order_leaf_data, to_hex
from streams.consumer import IdempotentConsumer
from streams.events import ORDER_CONFIRMED, Envelope

log = logging.getLogger(__name__)

ACTOR_NAME = "agora:ledger"
SUBSCRIPTION = "ledger"
ORDER_KIND = store.ORDER_KIND
MAX_BACKOFF_S = 5.0
START_TIMEOUT_S = 30.0
ROOT_WITHOUT_LOG = "root on chain, its anchoring transaction not in the node's logs yet"


@dataclass(frozen=True)
class LedgerConfig:
    """Everything the ledger needs, as plain values (built from settings by the CLI)."""

    database_url: str
    pulsar_url: str
    orders_topic: str
    rpc_url: str
    private_key: str = field(repr=False)
    confirmations: int = 0
    batch_size: int = 256
    batch_interval_s: float = 2.0
    receipt_timeout_s: float = 10.0
    poll_s: float = 0.2


def order_leaf(envelope: Envelope) -> str:
    """The canonical leaf data of an ``order.confirmed`` event (see ledger.merkle)."""
    p = envelope.payload
    return order_leaf_data(
        order_id=str(p.get("order_id") or envelope.key),
        total_minor=p["total"],
        currency=str(p.get("currency") or "BRL"),
        payment_id=str(p.get("payment_id") or "none"),
        confirmed_at=envelope.occurred_at,
    )


class OrderConfirmedFeed(IdempotentConsumer):
    """Records one leaf per confirmed order, in the transaction that marks the event applied."""

    name = SUBSCRIPTION

    # Confirmed orders waiting together are recorded in one transaction (``IdempotentConsumer``).
    batch_max = 32

    def __init__(self, orders_topic: str) -> None:
        super().__init__(topics=[orders_topic])

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        if envelope.type != ORDER_CONFIRMED.name:
            return False  # other order events: nothing to record, nothing to claim
        return await super().handle(pool, envelope)

    async def handle_batch(self, pool: asyncpg.Pool, envelopes: Sequence[Envelope]) -> int:
        confirmed = [e for e in envelopes if e.type == ORDER_CONFIRMED.name]
        if not confirmed:
            return 0  # as in ``handle``: the other order events are not even claimed
        return await super().handle_batch(pool, confirmed)

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        try:
            data = order_leaf(envelope)
        except (KeyError, LeafDataError) as exc:
            raise ValueError(f"order.confirmed {envelope.id} has no valid leaf: {exc}") from exc
        await store.record_leaf(conn, ORDER_KIND, envelope.key, data)


class Ledger:
    """The actor: the feed and the anchorer, plus ``submit_leaf`` and ``health``."""

    def __init__(self, config: LedgerConfig) -> None:
        self._config = config
        self._policy = BatchPolicy(config.batch_size, config.batch_interval_s)
        self._pool: asyncpg.Pool | None = None
        self._chain: Chain | None = None
        self._contract: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_error: str | None = None
        self._chain_ok: bool | None = None
        self._anchored_batches = 0
        self._last_gas: int | None = None
        self._connect_lock = asyncio.Lock()
        if _inside_ray_actor():
            self._ensure_running()

    # --- the actor's methods ------------------------------------------------

    async def start(self) -> dict[str, Any]:
        self._ensure_running()
        await asyncio.wait_for(self._connect(), timeout=START_TIMEOUT_S)
        return await self.health()

    async def submit_leaf(self, kind: str, key: str, data: str) -> str:
        """Record a leaf ``agora.<kind>.v1|key=..|data=..`` once per (kind, key); its hash."""
        if kind == ORDER_KIND:
            raise ValueError("order leaves come from order.confirmed events only")
        leaf_data = leaf_data_for(kind, key, data)
        await self._connect()
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await store.record_leaf(conn, kind, key, leaf_data)
        return to_hex(leaf_hash(leaf_data))

    async def health(self) -> dict[str, Any]:
        self._ensure_running()
        stats: dict[str, Any] = {}
        if self._pool is not None:
            try:
                async with self._pool.acquire() as conn:
                    stats = await asyncio.wait_for(store.stats(conn), 2.0)
            except Exception as exc:
                stats = {"error": _describe(exc)}
        self._chain_ok = await node_reachable(self._config.rpc_url, timeout_s=1.0)
        return {
            "running": all(not t.done() for t in self._tasks) and bool(self._tasks),
            "chain_reachable": self._chain_ok,
            "contract": self._contract,
            "anchored_batches": self._anchored_batches,
            "last_gas": self._last_gas,
            "last_error": self._last_error,
            "pid": os.getpid(),
            **stats,
        }

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._chain is not None:
            await self._chain.close()
        if self._pool is not None:
            await self._pool.close()
        self._pool = self._chain = None

    # --- loops ----------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._stop.is_set() or (self._tasks and all(not t.done() for t in self._tasks)):
            return
        for task in self._tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._feed(), name="ledger-feed"),
            loop.create_task(self._anchorer(), name="ledger-anchorer"),
        ]

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    dsn=self._config.database_url, min_size=1, max_size=3
                )
            if self._chain is None:
                self._chain = Chain(self._config.rpc_url, self._config.private_key)

    async def _feed(self) -> None:
        backoff = self._config.poll_s
        while not self._stop.is_set():
            try:
                await self._connect()
                assert self._pool is not None
                feed = OrderConfirmedFeed(self._config.orders_topic)
                await feed.run(self._pool, self._config.pulsar_url, self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"feed: {_describe(exc)}"
                log.warning("ledger %s", self._last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _anchorer(self) -> None:
        backoff = self._config.poll_s
        while not self._stop.is_set():
            try:
                await self._connect()
                progressed = await self.step()
                self._chain_ok = True if self._contract else self._chain_ok
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ChainUnavailable):
                    self._chain_ok = False
                    self._contract = None  # the node may come back with fresh state
                self._last_error = f"anchor: {_describe(exc)}"
                log.warning("ledger %s", self._last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = self._config.poll_s
            if not progressed:
                await asyncio.sleep(self._config.poll_s)

    async def step(self) -> bool:
        """Close a batch if one is due, else move the oldest unanchored batch on; progressed?"""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            waiting, age, unanchored = await store.waiting(conn)
            if self._policy.should_close(waiting, age, unanchored):
                await store.close_batch(conn, self._policy.take(waiting))
                return True
            batch = await store.oldest_unanchored(conn)
            if batch is None:
                return False
            contract = await self._ensure_contract(conn)
            return await self._advance(conn, batch, contract)

    async def _ensure_contract(self, conn: asyncpg.Connection) -> str:
        """The AnchorRegistry address on this chain: remembered, or deployed now."""
        if self._contract is not None:
            return self._contract
        chain = self._chain
        assert chain is not None
        chain_id = await chain.chain_id()
        address = await store.contract_for(conn, chain_id)
        if address is None or not await chain.code_at(address):
            address, tx_hash = await chain.deploy(self._config.confirmations)
            again = await store.remember_contract(conn, chain_id, address, tx_hash)
            log.warning(
                "ledger: AnchorRegistry deployed at %s (%d batches re-anchor)", address, again
            )
        self._contract = address
        self._chain_ok = True
        return address

    async def _advance(self, conn: asyncpg.Connection, batch: store.Batch, contract: str) -> bool:
        chain = self._chain
        assert chain is not None
        if batch.status == "closed":
            onchain = await chain.roots(contract, batch.batch_id)
            if onchain == batch.root:
                # Anchored by a transaction whose record was lost: adopt it. Never sign
                # another anchor for a root the contract holds (it would only revert and
                # leave the batch 'sending'); wait for the node's logs to show it.
                found = await chain.anchored_tx(contract, batch.batch_id)
                if found is not None:
                    return await self._finish(conn, batch, contract, found)
                await store.note_error(conn, batch.batch_id, ROOT_WITHOUT_LOG)
                return False
            if onchain != store.ZERO_ROOT:
                raise RuntimeError(f"batch {batch.batch_id} holds another root on chain")
            tx = await chain.build_anchor(
                contract, batch.batch_id, batch.root, batch.leaf_count, await chain.pending_nonce()
            )
            await store.mark_sending(
                conn, batch.batch_id, await chain.chain_id(), contract, tx.nonce, tx.tx_hash, tx.raw
            )
            await chain.send_raw(tx.raw)
            return True
        assert batch.tx_hash is not None and batch.raw_tx is not None and batch.nonce is not None
        receipt = await chain.wait_for_receipt(
            batch.tx_hash, self._config.confirmations, self._config.receipt_timeout_s
        )
        if receipt is not None and receipt.status == 1:
            return await self._finish(conn, batch, contract, batch.tx_hash)
        onchain = await chain.roots(contract, batch.batch_id)
        if onchain == batch.root:
            found = await chain.anchored_tx(contract, batch.batch_id)
            if found is not None and found != batch.tx_hash:
                return await self._finish(conn, batch, contract, found)
            if found is None and receipt is not None:  # ours reverted; the anchor's log unseen
                await store.mark_closed(conn, batch.batch_id, ROOT_WITHOUT_LOG)
                return True
            return False  # ours, mined, not yet confirmed enough
        if receipt is not None:  # reverted (status 0): sign again
            await store.mark_closed(conn, batch.batch_id, "anchor transaction reverted")
            return True
        if await chain.receipt(batch.tx_hash) is not None:
            return False  # mined, waiting for confirmations
        if await chain.latest_nonce() > batch.nonce:
            await store.mark_closed(conn, batch.batch_id, "nonce taken by another transaction")
            return True
        await chain.send_raw(batch.raw_tx)  # lost by the node (restart): the same bytes again
        await store.note_error(conn, batch.batch_id, "no receipt yet; transaction re-sent")
        return False

    async def _finish(
        self, conn: asyncpg.Connection, batch: store.Batch, contract: str, tx_hash: bytes
    ) -> bool:
        chain = self._chain
        assert chain is not None
        receipt = await chain.confirmed_receipt(tx_hash, self._config.confirmations)
        if receipt is None or receipt.status != 1:
            return False
        await store.mark_anchored(
            conn,
            batch.batch_id,
            receipt.tx_hash,
            receipt.block_number,
            receipt.block_hash,
            receipt.gas_used,
        )
        self._anchored_batches += 1
        self._last_gas = receipt.gas_used
        self._last_error = None
        return True


def _inside_ray_actor() -> bool:
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


LedgerActor = ray.remote(max_restarts=-1, max_task_retries=0)(Ledger)


def get_or_create_ledger(namespace: str, config: LedgerConfig, name: str = ACTOR_NAME) -> Any:
    """The detached ledger actor, created if missing and started (``config`` applies on create)."""
    handle: Any = LedgerActor.options(  # type: ignore[attr-defined]
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(config)
    handle.start.remote()
    return handle


async def submit_leaf(
    namespace: str, kind: str, key: str, data: str, timeout_s: float = 30.0
) -> str:
    """The port for other parts: record a leaf via the actor; its hash (``0x…``).

    Recording is idempotent per (kind, key), so a call that met a restarting actor
    is simply made again, until ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=namespace)
            leaf: str = await handle.submit_leaf.remote(kind, key, data)
            return leaf
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.2)
