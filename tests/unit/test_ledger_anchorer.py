"""The ledger's anchorer and chain client against a real anvil; its tables in memory.

anvil (``ledger/node_modules``, installed by ``make deps`` like the solc the unit
tier already runs) is started once for this module on a free port with no state
kept; it starts in well under a second. The ledger's tables are the one thing
not real here: ``MemoryLedgerStore`` keeps them in dicts with the semantics of
``ledger.store`` (one leaf per (kind, key), batches built with the real
``MerkleTree``, the status moves of the SQL), so the crash-safety decisions of
``Ledger.step`` are exercised against real transactions, receipts, reverts and
nonces. The SQL itself is covered by tests/integration/test_ledger_chain.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3RPCError

import ledger.actor as ledger_actor
from cluster.infra import _free_port, _wait_tcp, anvil_binary
from ledger import audit_anchor, store
from ledger.actor import Ledger, LedgerConfig, OrderConfirmedFeed
from ledger.chain import ANVIL_DEV_KEY, Chain, node_reachable
from ledger.merkle import MerkleTree, leaf_data_for, leaf_hash, to_hex
from ledger.verify import ProofInvalid, check_offline, check_on_chain, main, verify_proof
from streams.consumers.audit import Appended
from streams.events import ORDER_CONFIRMED, make_event

# --- the ledger's tables in memory -------------------------------------------------------


class MemoryLedgerStore:
    """``ledger.store``'s functions over dicts (``conn`` is ignored)."""

    ZERO_ROOT = store.ZERO_ROOT
    ORDER_KIND = store.ORDER_KIND
    Batch = store.Batch

    def __init__(self) -> None:
        self.leaves: dict[tuple[str, str], dict[str, Any]] = {}
        self.batches: dict[int, dict[str, Any]] = {}
        self.contracts: dict[int, tuple[str, bytes]] = {}
        self.errors: list[str] = []

    def _batch(self, batch_id: int) -> store.Batch:
        row = self.batches[batch_id]
        return store.Batch(**{k: row[k] for k in store.Batch.__dataclass_fields__})

    async def record_leaf(self, conn: Any, kind: str, key: str, leaf_data: str) -> bool:
        if (kind, key) in self.leaves:
            return False
        self.leaves[kind, key] = {
            "leaf_id": len(self.leaves) + 1,
            "leaf_data": leaf_data,
            "leaf": leaf_hash(leaf_data),
            "recorded_at": time.monotonic(),
            "batch_id": None,
            "path": b"",
        }
        return True

    def _waiting_leaves(self) -> list[dict[str, Any]]:
        return sorted(
            (x for x in self.leaves.values() if x["batch_id"] is None), key=lambda x: x["leaf_id"]
        )

    async def close_batch(self, conn: Any, max_leaves: int) -> store.Batch | None:
        rows = self._waiting_leaves()[:max_leaves]
        if not rows:
            return None
        tree = MerkleTree.build([r["leaf"] for r in rows])
        batch_id = max(self.batches, default=0) + 1
        self.batches[batch_id] = {
            "batch_id": batch_id,
            "status": "closed",
            "root": tree.root,
            "leaf_count": len(rows),
            **dict.fromkeys(
                ("chain_id", "contract", "nonce", "tx_hash", "raw_tx", "block_number"), None
            ),
            "gas_used": None,
            "block_hash": None,
            "attempts": 0,
            "last_error": None,
        }
        for position, (row, path) in enumerate(zip(rows, tree.proofs(), strict=True)):
            row.update(batch_id=batch_id, position=position, path=b"".join(path))
        return self._batch(batch_id)

    async def waiting(self, conn: Any) -> tuple[int, float | None, int]:
        rows = self._waiting_leaves()
        age = time.monotonic() - min(r["recorded_at"] for r in rows) if rows else None
        unanchored = sum(b["status"] != "anchored" for b in self.batches.values())
        return len(rows), age, unanchored

    async def oldest_unanchored(self, conn: Any) -> store.Batch | None:
        ids = sorted(i for i, b in self.batches.items() if b["status"] != "anchored")
        return self._batch(ids[0]) if ids else None

    async def mark_sending(
        self,
        conn: Any,
        batch_id: int,
        chain_id: int,
        contract: str,
        nonce: int,
        tx_hash: bytes,
        raw_tx: bytes,
    ) -> None:
        row = self.batches[batch_id]
        row.update(
            status="sending",
            chain_id=chain_id,
            contract=contract,
            nonce=nonce,
            tx_hash=tx_hash,
            raw_tx=raw_tx,
            last_error=None,
        )
        row["attempts"] += 1

    async def mark_anchored(
        self,
        conn: Any,
        batch_id: int,
        tx_hash: bytes,
        block_number: int,
        block_hash: bytes,
        gas_used: int,
    ) -> None:
        self.batches[batch_id].update(
            status="anchored",
            tx_hash=tx_hash,
            block_number=block_number,
            block_hash=block_hash,
            gas_used=gas_used,
            last_error=None,
        )

    async def mark_closed(self, conn: Any, batch_id: int, reason: str) -> None:
        self.batches[batch_id].update(
            status="closed", nonce=None, tx_hash=None, raw_tx=None, last_error=reason[:500]
        )
        self.errors.append(reason)

    async def note_error(self, conn: Any, batch_id: int, reason: str) -> None:
        self.batches[batch_id]["last_error"] = reason[:500]
        self.errors.append(reason)

    async def contract_for(self, conn: Any, chain_id: int) -> str | None:
        found = self.contracts.get(chain_id)
        return found[0] if found else None

    async def remember_contract(self, conn: Any, chain_id: int, address: str, tx: bytes) -> int:
        self.contracts[chain_id] = (address, tx)
        again = [b for b in self.batches.values() if b["chain_id"] == chain_id]
        for b in again:
            b.update(
                status="closed",
                contract=None,
                nonce=None,
                tx_hash=None,
                raw_tx=None,
                block_number=None,
                block_hash=None,
                gas_used=None,
            )
        return len(again)

    async def proof_for(self, conn: Any, kind: str, key: str) -> dict[str, Any] | None:
        leaf = self.leaves.get((kind, key))
        if leaf is None:
            return None
        batch = self.batches.get(leaf["batch_id"]) if leaf["batch_id"] else None
        if batch is None or batch["status"] != "anchored":
            return {"anchored": False, "batch_id": leaf["batch_id"]}
        path = leaf["path"]
        return {
            "anchored": True,
            "leaf_data": leaf["leaf_data"],
            "leaf": to_hex(leaf["leaf"]),
            "path": [to_hex(path[i : i + 32]) for i in range(0, len(path), 32)],
            "root": to_hex(batch["root"]),
            "batch_id": batch["batch_id"],
            "chain_id": batch["chain_id"],
            "contract": batch["contract"],
            "tx_hash": to_hex(batch["tx_hash"]),
            "block_number": batch["block_number"],
        }

    async def stats(self, conn: Any) -> dict[str, Any]:
        backlog = [
            x
            for x in self.leaves.values()
            if x["batch_id"] is None or self.batches[x["batch_id"]]["status"] != "anchored"
        ]
        return {"backlog_leaves": len(backlog)}


class MemoryPool:
    def __init__(self) -> None:
        self.closed = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> Any:
        yield None

    async def close(self) -> None:
        self.closed = True


# --- anvil ---------------------------------------------------------------------------------


class Anvil:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port(19100, 19200)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp,
        )
        _wait_tcp("127.0.0.1", self.port, 20)
        self.w3 = Web3(HTTPProvider(self.url))

    def mine(self, blocks: int) -> None:
        self.w3.provider.make_request("anvil_mine", [blocks])  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    node = Anvil(tmp_path_factory.mktemp("anvil"))
    yield node
    node.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{_free_port(19200, 19300)}"


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> MemoryLedgerStore:
    tables = MemoryLedgerStore()
    monkeypatch.setattr(ledger_actor, "store", tables)
    return tables


@pytest.fixture
async def ledgers(anvil: Anvil) -> Any:
    """``make(**config)``: a Ledger on the memory tables and anvil, loops not started."""
    made: list[Ledger] = []

    def make(rpc_url: str | None = None, **overrides: Any) -> Ledger:
        values: dict[str, Any] = {
            "database_url": "postgresql://unused",
            "pulsar_url": "pulsar://unused",
            "orders_topic": "persistent://t/t/orders",
            "rpc_url": rpc_url or anvil.url,
            "private_key": ANVIL_DEV_KEY,
            "batch_size": 4,
            "batch_interval_s": 0.0,
            "receipt_timeout_s": 2.0,
            "poll_s": 0.01,
        }
        ledger = Ledger(LedgerConfig(**{**values, **overrides}))
        ledger._pool = MemoryPool()  # type: ignore[assignment]
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.stop()


async def run_until_idle(ledger: Ledger, limit: int = 50) -> int:
    """``step`` until it makes no progress; the steps that did."""
    await ledger._connect()
    for done in range(limit):
        if not await ledger.step():
            return done
    raise AssertionError("the anchorer never went idle")


async def submit(ledger: Ledger, n: int, prefix: str = "k") -> list[str]:
    return [await ledger.submit_leaf("test", f"{prefix}{i}", f"d{i}") for i in range(n)]


# --- the anchorer --------------------------------------------------------------------------


async def second_batch_closed(ledgers: Any) -> tuple[Ledger, Chain, str]:
    """A ledger whose batch 1 is anchored and whose batch 2 has just closed."""
    ledger = ledgers()
    await submit(ledger, 1, "a")
    await run_until_idle(ledger)
    chain, contract = ledger._chain, ledger._contract
    assert chain is not None and contract is not None
    await submit(ledger, 1, "b")
    await ledger.step()  # closes batch 2
    return ledger, chain, contract


async def recorded_as_sending(
    memory: MemoryLedgerStore, chain: Chain, contract: str, batch_id: int, tx: Any
) -> None:
    """Batch ``batch_id`` as the ledger records it just before it sends ``tx``."""
    chain_id = await chain.chain_id()
    await memory.mark_sending(None, batch_id, chain_id, contract, tx.nonce, tx.tx_hash, tx.raw)


async def test_batches_are_anchored_once_and_every_proof_verifies_on_chain(
    ledgers: Any, memory: MemoryLedgerStore, anvil: Anvil
) -> None:
    ledger = ledgers()
    hashes = await submit(ledger, 6)
    assert hashes[0] == to_hex(leaf_hash(leaf_data_for("test", "k0", "d0")))
    assert await ledger.submit_leaf("test", "k0", "d0") == hashes[0]  # recorded once
    with pytest.raises(ValueError, match="order leaves"):
        await ledger.submit_leaf("order", "o1", "x")
    nonce = anvil.w3.eth.get_transaction_count(Account.from_key(ANVIL_DEV_KEY).address)
    await run_until_idle(ledger)
    assert [(b["status"], b["leaf_count"]) for b in memory.batches.values()] == [
        ("anchored", 4),
        ("anchored", 2),
    ]
    # one deployment and one anchor per batch: nothing sent twice
    assert anvil.w3.eth.get_transaction_count(ledger._chain.address) == nonce + 3  # type: ignore[union-attr]
    for i in range(6):
        proof = await memory.proof_for(None, "test", f"k{i}")
        assert proof is not None and proof.pop("anchored") is True
        summary = verify_proof(proof, anvil.url)
        assert summary.startswith(f"batch {proof['batch_id']} (")
    health = await ledger.health()
    assert health["anchored_batches"] == 2 and health["contract"] == ledger._contract
    assert health["chain_reachable"] is True and health["backlog_leaves"] == 0
    assert health["last_gas"] > 21_000 and health["last_error"] is None


async def test_a_lost_record_of_a_mined_anchor_is_adopted_not_sent_again(
    ledgers: Any, memory: MemoryLedgerStore, anvil: Anvil
) -> None:
    ledger = ledgers()
    await submit(ledger, 3)
    await run_until_idle(ledger)
    (batch,) = memory.batches.values()
    mined_tx = batch["tx_hash"]
    # The crash: the anchor was mined, but the batch row still says 'closed'.
    batch.update(status="closed", tx_hash=None, raw_tx=None, nonce=None, block_number=None)
    nonce = anvil.w3.eth.get_transaction_count(ledger._chain.address)  # type: ignore[union-attr]
    restarted = ledgers()
    assert await run_until_idle(restarted) == 1
    assert batch["status"] == "anchored" and batch["tx_hash"] == mined_tx
    assert anvil.w3.eth.get_transaction_count(ledger._chain.address) == nonce  # type: ignore[union-attr]


async def test_a_root_on_chain_whose_log_is_not_found_is_never_anchored_again(
    ledgers: Any, memory: MemoryLedgerStore, anvil: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledgers()
    await submit(ledger, 3)
    await run_until_idle(ledger)
    (batch,) = memory.batches.values()
    mined_tx = batch["tx_hash"]
    # The record of the mined anchor was lost, and the node cannot find its log (pruned or
    # still indexing): the root is on chain, so a new anchor would only revert.
    batch.update(status="closed", tx_hash=None, raw_tx=None, nonce=None, block_number=None)
    nonce = anvil.w3.eth.get_transaction_count(ledger._chain.address)  # type: ignore[union-attr]
    restarted = ledgers()
    await restarted._connect()
    assert restarted._chain is not None

    indexed = False
    real_lookup = restarted._chain.anchored_tx

    async def lookup(address: str, batch_id: int) -> bytes | None:
        return await real_lookup(address, batch_id) if indexed else None

    monkeypatch.setattr(restarted._chain, "anchored_tx", lookup)
    for _ in range(3):
        assert await restarted.step() is False
    assert anvil.w3.eth.get_transaction_count(ledger._chain.address) == nonce  # type: ignore[union-attr]
    assert batch["status"] == "closed" and batch["last_error"] == ledger_actor.ROOT_WITHOUT_LOG
    # Our own anchor recorded as sending, reverted because the root is there: closed again.
    again = await restarted._chain.build_anchor(
        restarted._contract, 1, batch["root"], 3, await restarted._chain.pending_nonce()
    )
    await restarted._chain.send_raw(again.raw)
    await recorded_as_sending(memory, restarted._chain, restarted._contract, 1, again)
    assert await restarted.step() is True
    assert batch["status"] == "closed" and batch["last_error"] == ledger_actor.ROOT_WITHOUT_LOG
    # Once the node's logs show the anchor, it is adopted.
    indexed = True
    assert await run_until_idle(restarted) == 1
    assert batch["status"] == "anchored" and batch["tx_hash"] == mined_tx


async def test_another_root_under_our_batch_id_stops_the_anchorer(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger, chain, contract = await second_batch_closed(ledgers)
    foreign = await chain.build_anchor(contract, 2, b"\x07" * 32, 1, await chain.pending_nonce())
    await chain.send_raw(foreign.raw)
    await chain.wait_for_receipt(foreign.tx_hash, 0, 5)
    with pytest.raises(RuntimeError, match="holds another root"):
        await ledger.step()
    assert memory.batches[2]["status"] == "closed"


async def test_a_reverted_anchor_goes_back_to_closed(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger, chain, contract = await second_batch_closed(ledgers)
    # Before our anchor is mined, batch 2's id gets another root on chain: ours reverts.
    foreign = await chain.build_anchor(contract, 2, b"\x07" * 32, 1, await chain.pending_nonce())
    await chain.send_raw(foreign.raw)
    ours = await chain.build_anchor(
        contract, 2, memory.batches[2]["root"], 1, await chain.pending_nonce()
    )
    await chain.send_raw(ours.raw)
    await recorded_as_sending(memory, chain, contract, 2, ours)
    receipt = await chain.receipt(ours.tx_hash)
    assert receipt is not None and receipt.status == 0
    assert await ledger.step() is True
    assert memory.batches[2]["status"] == "closed"
    assert memory.batches[2]["last_error"] == "anchor transaction reverted"


async def test_an_anchor_made_by_another_transaction_is_adopted(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger = ledgers()
    await submit(ledger, 2)
    await ledger._connect()
    await ledger.step()  # closes batch 1
    chain = ledger._chain
    assert chain is not None
    contract = await ledger._ensure_contract(None)  # type: ignore[arg-type]
    root = memory.batches[1]["root"]
    first = await chain.build_anchor(contract, 1, root, 2, await chain.pending_nonce())
    second = await chain.build_anchor(contract, 1, root, 2, first.nonce + 1)
    await chain.send_raw(first.raw)
    await chain.send_raw(second.raw)  # reverts: batch 1 is anchored already
    await recorded_as_sending(memory, chain, contract, 1, second)
    assert await ledger.step() is True
    assert memory.batches[1]["status"] == "anchored"
    assert memory.batches[1]["tx_hash"] == first.tx_hash


async def test_an_unsent_anchor_is_sent_again_or_re_signed_when_its_nonce_was_taken(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger = ledgers(receipt_timeout_s=0.2)
    await submit(ledger, 2)
    await ledger._connect()
    await ledger.step()  # closes batch 1
    chain = ledger._chain
    assert chain is not None
    contract = await ledger._ensure_contract(None)  # type: ignore[arg-type]
    root = memory.batches[1]["root"]

    # Recorded as sending, but the node never got it (it restarted): the same bytes again.
    lost = await chain.build_anchor(contract, 1, root, 2, await chain.pending_nonce())
    await recorded_as_sending(memory, chain, contract, 1, lost)
    assert await ledger.step() is False
    assert memory.errors == ["no receipt yet; transaction re-sent"]
    assert await ledger.step() is True
    assert memory.batches[1]["status"] == "anchored"
    assert memory.batches[1]["tx_hash"] == lost.tx_hash

    # Batch 2's recorded transaction can never be mined: its nonce went to another one.
    await submit(ledger, 1, "late")
    await ledger.step()  # closes batch 2
    root2 = memory.batches[2]["root"]
    nonce = await chain.pending_nonce()
    doomed = await chain.build_anchor(contract, 2, root2, 1, nonce)
    other = await chain.build_anchor(contract, 99, b"\x05" * 32, 1, nonce)
    await chain.send_raw(other.raw)
    await chain.wait_for_receipt(other.tx_hash, 0, 5)
    await recorded_as_sending(memory, chain, contract, 2, doomed)
    assert await ledger.step() is True
    assert memory.batches[2]["status"] == "closed"
    assert memory.errors[-1] == "nonce taken by another transaction"
    await run_until_idle(ledger)
    assert memory.batches[2]["status"] == "anchored"
    assert memory.batches[2]["tx_hash"] != doomed.tx_hash


async def test_an_anchor_waits_for_its_confirmations(
    ledgers: Any, memory: MemoryLedgerStore, anvil: Anvil
) -> None:
    deployer = ledgers()
    await deployer._connect()
    await deployer._ensure_contract(None)  # type: ignore[arg-type]  # remembered in memory
    ledger = ledgers(confirmations=2, receipt_timeout_s=0.1)
    await submit(ledger, 1)
    await ledger._connect()
    assert await ledger.step() is True  # closes
    assert await ledger.step() is True  # sends
    assert await ledger.step() is False  # mined, one block deep: not confirmed yet
    assert memory.batches[1]["status"] == "sending"
    anvil.mine(2)
    assert await ledger.step() is True
    assert memory.batches[1]["status"] == "anchored"


async def test_a_chain_that_lost_its_state_gets_a_new_contract_and_every_batch_again(
    ledgers: Any, memory: MemoryLedgerStore, anvil: Anvil
) -> None:
    ledger = ledgers()
    await submit(ledger, 3, "old")
    await run_until_idle(ledger)
    old_contract = ledger._contract
    assert old_contract is not None and memory.batches[1]["status"] == "anchored"
    anvil.w3.provider.make_request("anvil_setCode", [old_contract, "0x"])  # type: ignore[arg-type]

    restarted = ledgers()
    await submit(restarted, 1, "new")
    await run_until_idle(restarted)
    assert restarted._contract not in (None, old_contract)
    assert [b["status"] for b in memory.batches.values()] == ["anchored", "anchored"]
    assert {b["contract"] for b in memory.batches.values()} == {restarted._contract}
    proof = await memory.proof_for(None, "test", "old0")
    assert proof is not None and proof.pop("anchored")
    assert verify_proof(proof, anvil.url).startswith("batch 1 (3 leaves)")


async def test_the_anchorer_loop_anchors_in_the_background_and_stops(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger = ledgers()
    await submit(ledger, 5)
    task = asyncio.get_running_loop().create_task(ledger._anchorer())
    ledger._tasks = [task]  # the feed needs Pulsar: only the anchorer runs here
    for _ in range(500):
        if len(memory.batches) == 2 and all(
            b["status"] == "anchored" for b in memory.batches.values()
        ):
            break
        await asyncio.sleep(0.01)
    health = await ledger.health()
    assert health["running"] is True and health["anchored_batches"] == 2
    pool = ledger._pool
    await ledger.stop()
    assert task.done() and pool.closed  # type: ignore[union-attr]
    assert ledger._chain is None and ledger._pool is None


async def test_a_chain_that_is_down_only_stops_the_anchorer(
    ledgers: Any, memory: MemoryLedgerStore
) -> None:
    ledger = ledgers(rpc_url=dead_url())
    await submit(ledger, 2)  # recording needs no chain
    task = asyncio.get_running_loop().create_task(ledger._anchorer())
    ledger._tasks = [task]
    for _ in range(300):
        if ledger._last_error:
            break
        await asyncio.sleep(0.01)
    assert ledger._last_error is not None and ledger._last_error.startswith(
        "anchor: ChainUnavailable"
    )
    assert ledger._chain_ok is False and not task.done()
    health = await ledger.health()
    assert health["chain_reachable"] is False and health["backlog_leaves"] == 2
    assert [b["status"] for b in memory.batches.values()] == ["closed"]


async def test_the_feed_records_an_order_leaf_and_refuses_an_event_without_one(
    memory: MemoryLedgerStore,
) -> None:
    feed = OrderConfirmedFeed("persistent://t/t/orders")
    payload = {"order_id": "o1", "total": 12_990, "currency": "BRL", "payment_id": "pi_1"}
    event = make_event(ORDER_CONFIRMED, "o1", payload, 1_733_281_200_123)
    await feed.apply(None, event)  # type: ignore[arg-type]
    assert memory.leaves["order", "o1"]["leaf_data"] == (
        "agora.order.v1|order_id=o1|total=12990 BRL|payment_id=pi_1"
        "|confirmed_at=2024-12-04T03:00:00.123Z"
    )
    bad = make_event(ORDER_CONFIRMED, "o2", {**payload, "order_id": "o|2"}, 1)
    with pytest.raises(ValueError, match="no valid leaf"):
        await feed.apply(None, bad)  # type: ignore[arg-type]
    assert ("order", "o2") not in memory.leaves


# --- the chain client ----------------------------------------------------------------------


async def test_the_chain_client_treats_a_resend_as_sent_and_refuses_bad_transactions(
    anvil: Anvil,
) -> None:
    chain = Chain(anvil.url, ANVIL_DEV_KEY)
    try:
        assert ANVIL_DEV_KEY[2:] not in repr(chain) and chain.address in repr(chain)
        assert await chain.reachable() and await chain.chain_id() == 31337
        contract, _deploy_tx = await chain.deploy()
        assert len(await chain.code_at(contract)) > 0
        assert await chain.roots(contract, 5) == store.ZERO_ROOT
        assert await chain.anchored_tx(contract, 5) is None
        tx = await chain.build_anchor(contract, 5, b"\x01" * 32, 3, await chain.pending_nonce())
        assert await chain.receipt(tx.tx_hash) is None  # built, not sent
        await chain.send_raw(tx.raw)
        await chain.send_raw(tx.raw)  # the same bytes again: harmless
        receipt = await chain.wait_for_receipt(tx.tx_hash, 0, 5)
        assert receipt is not None and receipt.status == 1 and receipt.to is not None
        assert receipt.to.lower() == contract.lower() and len(receipt.logs) == 1
        await chain.send_raw(tx.raw)  # mined already ("nonce too low"): still sent
        assert await chain.roots(contract, 5) == b"\x01" * 32
        assert await chain.anchored_tx(contract, 5) == tx.tx_hash
        assert await chain.latest_nonce() == await chain.pending_nonce() == tx.nonce + 1
        assert await chain.confirmed_receipt(tx.tx_hash, 1_000) is None  # not that deep

        stranger = Account.create()
        foreign = stranger.sign_transaction(
            {
                "to": contract,
                "value": 0,
                "gas": 50_000,
                "gasPrice": 10**9,
                "nonce": 0,
                "chainId": 31337,
            }
        )
        with pytest.raises(Web3RPCError):  # an unfunded sender: refused, not "already sent"
            await chain.send_raw(bytes(foreign.raw_transaction))

        chain.bytecode = "0xfe"  # a constructor that always fails
        with pytest.raises(RuntimeError, match="deployment failed"):
            await chain.deploy()
    finally:
        await chain.close()


async def test_a_node_that_is_down_is_chain_unavailable(anvil: Anvil) -> None:
    assert await node_reachable(anvil.url) is True
    nowhere = dead_url()
    assert await node_reachable(nowhere, timeout_s=0.5) is False
    chain = Chain(nowhere, ANVIL_DEV_KEY, timeout_s=1.0)
    try:  # (a call raising ChainUnavailable: see the anchorer's chain-down test)
        assert await chain.reachable() is False
    finally:
        await chain.close()


# --- the verifier, on chain ----------------------------------------------------------------


@pytest.fixture(scope="module")
def anchored(anvil: Anvil) -> dict[str, Any]:
    """A real proof (three leaves anchored as batch 7 by a fresh contract on anvil), and
    other transactions of that contract: a reverted second anchor of batch 7 and the
    anchor of batch 8, each as (tx hash, block number)."""

    async def make() -> dict[str, Any]:
        chain = Chain(anvil.url, ANVIL_DEV_KEY)

        async def mined(batch_id: int, root: bytes, count: int) -> tuple[str, int, int]:
            tx = await chain.build_anchor(
                contract, batch_id, root, count, await chain.pending_nonce()
            )
            await chain.send_raw(tx.raw)
            receipt = await chain.wait_for_receipt(tx.tx_hash, 0, 5)
            assert receipt is not None
            return to_hex(tx.tx_hash), receipt.block_number, receipt.status

        try:
            contract, _ = await chain.deploy()
            datas = [leaf_data_for("test", f"v{i}", "x") for i in range(3)]
            tree = MerkleTree.build([leaf_hash(d) for d in datas])
            tx_hash, block_number, status = await mined(7, tree.root, 3)
            assert status == 1
            *reverted, status = await mined(7, tree.root, 3)  # AlreadyAnchored(7)
            assert status == 0
            *other, status = await mined(8, b"\x08" * 32, 1)
            assert status == 1
            proof = {
                "leaf_data": datas[1],
                "leaf": to_hex(leaf_hash(datas[1])),
                "path": [to_hex(p) for p in tree.proof(1)],
                "root": to_hex(tree.root),
                "batch_id": 7,
                "chain_id": 31337,
                "contract": contract,
                "tx_hash": tx_hash,
                "block_number": block_number,
            }
            return {"proof": proof, "reverted": tuple(reverted), "other": tuple(other)}
        finally:
            await chain.close()

    return asyncio.run(make())


@pytest.fixture
def anchored_proof(anchored: dict[str, Any]) -> dict[str, Any]:
    return dict(anchored["proof"])


def test_a_real_proof_verifies_and_the_command_says_ok(
    anchored_proof: dict[str, Any], anvil: Anvil, tmp_path: Path, capsys: Any
) -> None:
    anvil.mine(2)
    summary = verify_proof(anchored_proof, anvil.url)
    assert summary.startswith(
        f"batch 7 (3 leaves) anchored in block {anchored_proof['block_number']}"
    )
    depth = anvil.w3.eth.block_number - anchored_proof["block_number"]
    assert depth >= 2 and summary.endswith(f", {depth} confirmations")
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(anchored_proof))
    assert main([str(path), "--rpc", anvil.url]) == 0
    assert capsys.readouterr().out.startswith("OK: batch 7 (3 leaves)")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chain_id": 1}, "the node is chain 31337"),
        ({"batch_id": 9}, "roots\\(9\\) on chain is 0x0000"),
        ({"block_number": 1}, "the transaction is in block"),
        ({"contract": "0x" + "12" * 20}, "roots\\(7\\) on chain"),
        ({"contract": "not an address"}, "contract is not an address"),
        ({"tx_hash": "0x12"}, "bad tx_hash"),
        ({"batch_id": -1}, "negative"),
        ({"batch_id": True}, "batch_id"),
    ],
)
def test_any_on_chain_mismatch_fails(
    anchored_proof: dict[str, Any], anvil: Anvil, change: dict[str, Any], message: str
) -> None:
    _leaf, root = check_offline(anchored_proof)
    with pytest.raises(ProofInvalid, match=message):
        check_on_chain({**anchored_proof, **change}, anvil.w3, root)


def test_a_proof_pointing_at_another_transaction_fails(
    anchored: dict[str, Any], anvil: Anvil, tmp_path: Path, capsys: Any
) -> None:
    proof = anchored["proof"]
    _leaf, root = check_offline(proof)

    def fails(tx_hash: str, block_number: int, message: str) -> None:
        changed = {**proof, "tx_hash": tx_hash, "block_number": block_number}
        with pytest.raises(ProofInvalid, match=message):
            check_on_chain(changed, anvil.w3, root)

    # The contract's deployment: mined, succeeded, but not sent to the contract.
    deploy = anvil.w3.eth.get_block(proof["block_number"] - 1)["transactions"][0]
    fails(to_hex(bytes(deploy)), proof["block_number"] - 1, "not sent to the contract")  # type: ignore[arg-type]
    fails(*anchored["reverted"], "the anchoring transaction failed")
    fails(*anchored["other"], "no Anchored\\(batch_id, root\\) event")
    unknown = tmp_path / "unknown.json"  # a transaction the node never saw
    unknown.write_text(json.dumps({**proof, "tx_hash": "0x" + "42" * 32}))
    assert main([str(unknown), "--rpc", anvil.url]) == 1
    assert capsys.readouterr().out.startswith("FAIL: TransactionNotFound")


async def test_the_audit_port_records_each_chain_head_once_as_an_audit_leaf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tables = MemoryLedgerStore()
    monkeypatch.setattr(audit_anchor, "store", tables)
    port = audit_anchor.LedgerAuditAnchor(MemoryPool())  # type: ignore[arg-type]
    await port.anchor(Appended(41, "ab" * 32))
    await port.anchor(Appended(41, "cd" * 32))  # the same seq again: still the first head
    await port.anchor(Appended(42, "ef" * 32))
    assert {key: leaf["leaf_data"] for (_kind, key), leaf in tables.leaves.items()} == {
        "41": "agora.audit.v1|key=41|data=" + "ab" * 32,
        "42": "agora.audit.v1|key=42|data=" + "ef" * 32,
    }
    assert {kind for kind, _key in tables.leaves} == {audit_anchor.AUDIT_KIND}
