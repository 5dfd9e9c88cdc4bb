"""The ledger against the real system and its real anvil: order -> proof -> independent check,
the actor killed at each step of anchoring, and a chain outage that drains afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import ray
from web3 import HTTPProvider, Web3

from cluster import infra
from ledger.actor import ACTOR_NAME, submit_leaf
from ledger.audit_anchor import LedgerAuditAnchor
from ledger.merkle import from_hex
from streams.consumers.audit import Appended
from tests.conftest import eventually
from tests.e2e.shoppers import auth, new_product, new_shopper

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "postal_code": "01310-100",
    "country": "BR",
}
ANCHORED = Web3.keccak(text="Anchored(uint256,bytes32,uint64)")


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def chain_url(services) -> str:
    assert services.chain, "agora up records the chain URL"
    return services.chain


def ledger(ray_ns: str):
    return ray.get_actor(ACTOR_NAME, namespace=ray_ns)


def rpc(url: str, method: str, *params) -> object:
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return reply.json().get("result")


def anchored_logs(chain_url: str, contract: str, batch_id: int) -> list:
    w3 = Web3(HTTPProvider(chain_url))
    return w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(contract),
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [ANCHORED, "0x" + batch_id.to_bytes(32, "big").hex()],
        }
    )


def verify(proof: dict, chain_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"proof-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(proof))
    return subprocess.run(
        [sys.executable, "-m", "ledger.verify", str(path), "--rpc", chain_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def leaves_anchored_once(db, chain_url: str, kind: str, keys: list[str]) -> None:
    """Every leaf is in one anchored batch whose root is on chain, anchored by one event."""
    rows = await db.fetch(
        "SELECT l.key, l.batch_id, b.status, b.root, b.contract, b.tx_hash"
        " FROM ledger_leaves l JOIN ledger_batches b USING (batch_id)"
        " WHERE l.kind = $1 AND l.key = ANY($2::text[])",
        kind,
        keys,
    )
    assert sorted(r["key"] for r in rows) == sorted(keys), "a leaf was lost"
    w3 = Web3(HTTPProvider(chain_url))
    for batch_id in {r["batch_id"] for r in rows}:
        row = next(r for r in rows if r["batch_id"] == batch_id)
        assert row["status"] == "anchored"
        contract = w3.eth.contract(
            address=Web3.to_checksum_address(row["contract"]),
            abi=json.loads((ROOT / "ledger/contracts/AnchorRegistry.json").read_text())["abi"],
        )
        assert contract.functions.roots(batch_id).call() == bytes(row["root"])
        logs = anchored_logs(chain_url, row["contract"], batch_id)
        assert len(logs) == 1, f"batch {batch_id} anchored {len(logs)} times"
        assert bytes(logs[0]["transactionHash"]) == bytes(row["tx_hash"])


async def batch_status(db, kind: str, key: str) -> str | None:
    return await db.fetchval(
        "SELECT coalesce(b.status, 'recorded') FROM ledger_leaves l"
        " LEFT JOIN ledger_batches b USING (batch_id) WHERE l.kind = $1 AND l.key = $2",
        kind,
        key,
    )


async def test_confirmed_order_gets_a_proof_that_verifies_against_the_node(
    http, db, chain_url, tmp_path
):
    shopper = new_shopper(http)
    sku = await new_product(db, 5, price=4_990)
    headers = auth(shopper)
    assert http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers).is_success
    reply = http.post(
        "/v1/checkout",
        json={
            "shipping_address": ADDRESS,
            "shipping_method": "standard",
            "payment": {"method": "card", "token": "pm_card_visa"},
        },
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert reply.status_code == 201, reply.text
    order = reply.json()
    url = f"/v1/orders/{order['id']}/proof"
    first = http.get(url, headers=headers)
    if first.status_code == 404:
        assert first.json()["anchoring"] == "pending"
    proofs: list[dict] = []

    async def anchored() -> bool:
        got = http.get(url, headers=headers)
        if got.status_code == 200:
            proofs.append(got.json())
        return got.status_code == 200

    await eventually(anchored, timeout=60, interval=0.25)
    proof = proofs[-1]
    assert set(proof) == {
        "leaf_data",
        "leaf",
        "path",
        "root",
        "batch_id",
        "chain_id",
        "contract",
        "tx_hash",
        "block_number",
    }
    total = order["totals"]["total"]
    assert proof["leaf_data"].startswith(f"agora.order.v1|order_id={order['id']}|")
    assert f"|total={total['amount']} {total['currency']}|" in proof["leaf_data"]
    assert "|payment_id=none|" not in proof["leaf_data"]
    for name in ("leaf", "root", "tx_hash"):
        assert len(from_hex(proof[name])) == 32
    done = verify(proof, chain_url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK:")

    # Any change is caught by the verifier, with a non-zero exit.
    for name, value in (
        ("leaf_data", proof["leaf_data"].replace("total=", "total=1")),
        ("root", "0x" + "11" * 32),
        ("batch_id", proof["batch_id"] + 10_000),
        ("chain_id", proof["chain_id"] + 1),
        ("block_number", proof["block_number"] + 1),
        ("tx_hash", "0x" + "22" * 32),
    ):
        bad = verify({**proof, name: value}, chain_url, tmp_path)
        assert bad.returncode == 1 and bad.stdout.startswith("FAIL:"), (name, bad.stdout)


async def test_killed_between_sending_and_receipt_anchors_once(db, ray_ns, chain_url):
    actor = ledger(ray_ns)
    pid_before = (await actor.health.remote())["pid"]
    key = uuid.uuid4().hex
    rpc(chain_url, "evm_setAutomine", False)
    try:
        await actor.submit_leaf.remote("test", key, "sent-not-mined")

        async def sending() -> bool:
            return await batch_status(db, "test", key) == "sending"

        await eventually(sending, timeout=30, interval=0.1)
        ray.kill(actor, no_restart=False)
    finally:
        rpc(chain_url, "evm_setAutomine", True)
    rpc(chain_url, "evm_mine")

    async def anchored() -> bool:
        return await batch_status(db, "test", key) == "anchored"

    await eventually(anchored, timeout=60, interval=0.2)
    assert (await ledger(ray_ns).health.remote())["pid"] != pid_before  # it did restart
    await leaves_anchored_once(db, chain_url, "test", [key])


async def test_chain_down_grows_a_backlog_kill_then_drains(system, db, ray_ns, chain_url, http):
    """Recorded but not anchored when the actor dies, the chain away: nothing lost or doubled."""
    keys = [uuid.uuid4().hex for _ in range(40)]
    assert infra.stop_anvil(system)
    try:
        assert http.get("/readyz").json() == {"status": "ready", "degraded": ["chain"]}
        for key in keys[:20]:
            await submit_leaf(ray_ns, "test", key, "during-outage")
        ray.kill(ledger(ray_ns), no_restart=False)  # between recording and anchoring
        for key in keys[20:]:  # the port retries while the actor restarts
            await submit_leaf(ray_ns, "test", key, "during-outage")
        health = await ledger(ray_ns).health.remote()
        assert health["backlog_leaves"] >= len(keys)
    finally:
        assert infra.start_anvil(system) == chain_url

    async def drained() -> bool:
        statuses = [await batch_status(db, "test", k) for k in keys]
        return all(s == "anchored" for s in statuses)

    await eventually(drained, timeout=90, interval=0.5)
    await leaves_anchored_once(db, chain_url, "test", keys)
    assert http.get("/readyz").json() == {"status": "ready"}
    assert (await ledger(ray_ns).health.remote())["backlog_leaves"] == 0


async def test_audit_chain_head_is_anchored_through_the_port(db, chain_url):
    port = LedgerAuditAnchor(db)
    seq = 10**12 + uuid.uuid4().int % 10**9
    head = Appended(seq, uuid.uuid4().hex * 2)
    await port.anchor(head)
    await port.anchor(head)  # once per seq

    async def anchored() -> bool:
        # This head's own batch: an earlier run's larger seq may already be anchored.
        return await batch_status(db, "audit", str(seq)) == "anchored"

    await eventually(anchored, timeout=60, interval=0.2)
    got = await port.anchored()
    assert got is not None and got.seq >= seq
    await leaves_anchored_once(db, chain_url, "audit", [str(seq)])
