"""The ledger's anchorer on its own: a private PostgreSQL (pgserver) and private anvils.

Needs no running system (no fixed port): the chain loses its state (a fresh anvil on
the same address), the contract is deployed again and every batch is anchored again.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import HTTPProvider, Web3

from cluster import db
from cluster.infra import _free_port, _wait_tcp, anvil_binary
from ledger import store
from ledger.actor import Ledger, LedgerConfig
from ledger.chain import ANVIL_DEV_KEY
from ledger.verify import verify_proof

pytestmark = pytest.mark.integration

ANCHORED = Web3.keccak(text="Anchored(uint256,bytes32,uint64)")


class Anvil:
    def __init__(self, port: int, cwd: Path) -> None:
        self.port, self.cwd = port, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.cwd,
        )
        _wait_tcp("127.0.0.1", self.port, 20)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    node = Anvil(_free_port(18700, 18800), tmp_path)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def database(private_database: str) -> str:
    return private_database


def config(database_url: str, rpc_url: str) -> LedgerConfig:
    return LedgerConfig(
        database_url=database_url,
        pulsar_url="pulsar://127.0.0.1:1",  # no broker here: leaves come via submit_leaf
        orders_topic="persistent://t/t/orders",
        rpc_url=rpc_url,
        private_key=ANVIL_DEV_KEY,
        batch_size=4,
        batch_interval_s=0.2,
        poll_s=0.05,
    )


async def drained(ledger: Ledger, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        health = await ledger.health()
        if health.get("backlog_leaves") == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"backlog did not drain: {await ledger.health()}")


async def test_fresh_chain_redeploys_and_anchors_every_batch_again(database, anvil):
    keys = [uuid.uuid4().hex for _ in range(10)]
    ledger = Ledger(config(database, anvil.url))
    await ledger.start()
    try:
        for key in keys:
            await ledger.submit_leaf("test", key, "x")
        await drained(ledger)
        first = (await ledger.health())["contract"]
    finally:
        await ledger.stop()

    anvil.stop()  # no state kept: the chain starts over
    anvil.start()
    ledger = Ledger(config(database, anvil.url))
    await ledger.start()
    try:
        await ledger.submit_leaf("test", "after-restart", "y")
        conn = await db.connect(database)
        try:

            async def all_anchored() -> bool:
                anchored_leaves = await conn.fetchval(
                    "SELECT count(*) FROM ledger_leaves l JOIN ledger_batches b"
                    " USING (batch_id) WHERE b.status = 'anchored'"
                )
                return anchored_leaves == 11 and not await conn.fetchval(
                    "SELECT count(*) FROM ledger_batches WHERE status <> 'anchored'"
                )

            for _ in range(600):
                if await all_anchored():
                    break
                await asyncio.sleep(0.1)
            assert await all_anchored()
            batches = await conn.fetch("SELECT batch_id, root, contract FROM ledger_batches")
            assert len(batches) >= 4  # 10 leaves in batches of <= 4, then one more
            w3 = Web3(HTTPProvider(anvil.url))
            for batch in batches:
                logs = w3.eth.get_logs(
                    {
                        "address": Web3.to_checksum_address(batch["contract"]),
                        "fromBlock": 0,
                        "topics": [ANCHORED, "0x" + batch["batch_id"].to_bytes(32, "big").hex()],
                    }
                )
                assert len(logs) == 1 and bytes(logs[0]["data"])[:32] == bytes(batch["root"])
            for key in (*keys, "after-restart"):
                proof = await store.proof_for(conn, "test", key)
                assert proof is not None and proof.pop("anchored")
                assert verify_proof(proof, anvil.url).startswith(f"batch {proof['batch_id']} ")
        finally:
            await conn.close()
        assert first is not None
    finally:
        await ledger.stop()


async def test_chain_down_at_start_then_up(database, tmp_path):
    node = Anvil(_free_port(18800, 18900), tmp_path)
    ledger = Ledger(config(database, node.url))
    await ledger.start()  # the chain is not there: recording still works
    try:
        for i in range(5):
            await ledger.submit_leaf("test", f"k{i}", "x")
        await asyncio.sleep(1.0)
        health = await ledger.health()
        assert health["backlog_leaves"] == 5 and health["chain_reachable"] is False
        node.start()
        await drained(ledger)
        assert (await ledger.health())["chain_reachable"] is True
    finally:
        await ledger.stop()
        node.stop()
