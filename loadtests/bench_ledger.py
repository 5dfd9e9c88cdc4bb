"""Ledger costs: gas per batch and per order, and proof generation time.

Usage::

    python -m loadtests.bench_ledger [--sizes 1,16,256,4096] [--rounds 3]

Starts a private anvil (from ledger/node_modules, on a free port, state in a
temporary directory, stopped at the end), deploys AnchorRegistry and, for each
batch size N, builds the Merkle tree of N order leaves, anchors its root and
reads the receipt's ``gasUsed``. Baselines measured in the same run: the gas of
a plain 21,000-gas value transfer (so gas figures are also given as a ratio to
it), and the time of one keccak256 of a leaf (so proof times are a ratio too).
Proof generation = building the tree of N leaves, and producing one leaf's path.

``--lag`` also measures the anchoring lag at the default settings
(``AGORA_LEDGER_BATCH_SIZE``/``_INTERVAL_S``, 0 confirmations): a ``Ledger`` (the
actor's class, in this process) on a private PostgreSQL (pgserver, temporary
directory) and the same anvil, fed ``--rate`` leaves a second for ``--seconds``;
lag = recorded -> anchored per leaf, also as a ratio to the batch interval.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import db
from cluster.infra import _free_port, _wait_tcp, anvil_binary
from cluster.settings import Settings
from ledger.actor import Ledger, LedgerConfig
from ledger.chain import ANVIL_DEV_KEY, Chain
from ledger.merkle import MerkleTree, leaf_hash, order_leaf_data


def leaves(n: int, salt: int) -> list[bytes]:
    return [
        leaf_hash(
            order_leaf_data(
                f"0190c0de-0000-7000-8000-{salt:04d}{i:08d}",
                12_990 + i,
                "BRL",
                f"ch_{salt}_{i}",
                "2026-12-04T03:00:00.123Z",
            )
        )
        for i in range(n)
    ]


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def measure(url: str, sizes: list[int], rounds: int) -> None:
    chain = Chain(url, ANVIL_DEV_KEY)
    contract, _ = await chain.deploy()
    # Baseline gas: a plain value transfer from the same account.
    tx = {
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": 1,
        "gas": 21_000,
        "gasPrice": await chain.w3.eth.gas_price,
        "nonce": await chain.pending_nonce(),
        "chainId": await chain.chain_id(),
    }
    signed = chain._account.sign_transaction(tx)
    await chain.send_raw(bytes(signed.raw_transaction))
    base = await chain.wait_for_receipt(bytes(signed.hash), 0, 30)
    assert base is not None
    base_gas = base.gas_used
    one = leaves(1, 9999)[0]
    keccak_s = timed(lambda: leaf_hash("agora.order.v1|order_id=x|total=1 BRL"), 2000)
    print(f"baseline: value transfer {base_gas} gas; one leaf keccak256 {keccak_s * 1e6:.2f} us")
    print(
        f"{'batch':>6} {'gas/batch':>10} {'gas/order':>10} {'x transfer/order':>17}"
        f" {'tree build ms':>14} {'path us':>8} {'path x keccak':>13}"
    )
    batch_id = 1
    for n in sizes:
        gas = []
        tree = MerkleTree.build([one])
        for r in range(rounds):
            items = leaves(n, r)
            tree = MerkleTree.build(items)
            anchor = await chain.build_anchor(
                contract, batch_id, tree.root, n, await chain.pending_nonce()
            )
            await chain.send_raw(anchor.raw)
            receipt = await chain.wait_for_receipt(anchor.tx_hash, 0, 30)
            assert receipt is not None and receipt.status == 1
            gas.append(receipt.gas_used)
            batch_id += 1
        items = leaves(n, 0)
        build_s = timed(lambda items=items: MerkleTree.build(items), 3)
        path_s = timed(lambda tree=tree, n=n: tree.proof(n // 2), 200)
        per_batch = statistics.median(gas)
        print(
            f"{n:>6} {per_batch:>10.0f} {per_batch / n:>10.1f} {per_batch / n / base_gas:>17.4f}"
            f" {build_s * 1e3:>14.2f} {path_s * 1e6:>8.1f} {path_s / keccak_s:>13.1f}"
        )
    await chain.close()


async def measure_lag(url: str, database_url: str, rate: float, seconds: float) -> None:
    settings = Settings()
    conn = await db.connect(database_url)
    await db.migrate(conn)
    config = LedgerConfig(
        database_url=database_url,
        pulsar_url="pulsar://127.0.0.1:1",  # no broker: leaves come through submit_leaf
        orders_topic="persistent://bench/bench/orders",
        rpc_url=url,
        private_key=ANVIL_DEV_KEY,
        batch_size=settings.ledger_batch_size,
        batch_interval_s=settings.ledger_batch_interval_s,
    )
    ledger = Ledger(config)
    await ledger.start()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        await ledger.submit_leaf("bench", f"k{sent}", "lag")
        sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    for _ in range(600):  # the backlog drains within a minute
        if not (await ledger.health())["backlog_leaves"]:
            break
        await asyncio.sleep(0.1)
    rows = await conn.fetch(
        "SELECT extract(epoch FROM b.anchored_at - l.recorded_at) AS lag"
        " FROM ledger_leaves l JOIN ledger_batches b USING (batch_id) WHERE l.kind = 'bench'"
    )
    batches = await conn.fetchval("SELECT count(*) FROM ledger_batches")
    lags = sorted(float(r["lag"]) for r in rows)
    p50, p95 = lags[len(lags) // 2], lags[int(len(lags) * 0.95)]
    interval = config.batch_interval_s
    print(
        f"anchoring lag at batch size {config.batch_size}, interval {interval}s, {rate:.0f}"
        f" leaves/s: {len(lags)} leaves in {batches} batches; p50 {p50:.2f}s"
        f" ({p50 / interval:.2f}x interval), p95 {p95:.2f}s ({p95 / interval:.2f}x),"
        f" max {lags[-1]:.2f}s"
    )
    await ledger.stop()
    await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_ledger", description=__doc__)
    parser.add_argument("--sizes", default="1,16,256,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lag", action="store_true", help="also measure the anchoring lag")
    parser.add_argument("--rate", type=float, default=50.0, help="leaves/s for --lag")
    parser.add_argument("--seconds", type=float, default=10.0, help="feeding time for --lag")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    state = Path(tempfile.mkdtemp(prefix="agora-bench-anvil-"))
    port = _free_port(18545, 18645)
    proc = subprocess.Popen(
        [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=state,
    )
    try:
        _wait_tcp("127.0.0.1", port, 20)
        asyncio.run(measure(f"http://127.0.0.1:{port}", sizes, args.rounds))
        if args.lag:
            import pgserver

            server = pgserver.get_server(state / "pg", cleanup_mode="stop")
            url = f"http://127.0.0.1:{port}"
            asyncio.run(measure_lag(url, server.get_uri(), args.rate, args.seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
