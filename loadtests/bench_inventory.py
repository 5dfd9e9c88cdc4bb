"""Stock reservations per second on one inventory shard: group commit vs one commit each.

Runs against the system ``agora up`` started (its Ray head and PostgreSQL).
Two private, non-detached ``InventoryShard`` actors are created with the same
code: one with the default write-behind settings (many reservations share a
transaction: group commit), one with ``flush_batch_size=1`` (every reservation
waits for a transaction of its own). Each reservation is durable: the call
answers only after its commit. Both run in the same process, interleaved in
rounds, so machine noise hits both alike.

    .venv/bin/python -m loadtests.bench_inventory [--seconds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from actors.messages import Rejected
from cluster import infra
from cluster.settings import get_settings
from loadtests.stock import bench_products


async def _drive(shard, skus: list[str], concurrency: int, seconds: float) -> tuple[int, list]:
    done = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < deadline:
            sku = skus[i % len(skus)]
            start = time.perf_counter()
            reply = await shard.reserve.remote(sku, uuid.uuid4().hex, 1, 3600)
            latencies.append((time.perf_counter() - start) * 1000)
            if not isinstance(reply, Rejected):
                done += 1
            i += concurrency

    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    return done, latencies


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main(seconds: float, concurrency: int, rounds: int) -> None:
    settings = get_settings()
    os.environ.update(infra.ray_env(settings))
    import ray

    from actors.inventory.actor import InventoryShard
    from cluster.bootstrap import env_for

    ray.init(
        address=infra.ray_address(settings),
        namespace=settings.ray_namespace,
        logging_level="ERROR",
        log_to_driver=False,
    )
    skus = await bench_products("BNC", 256, price=100)
    variants = {
        "group commit (50 ms, batch 500)": settings,
        "one commit per reservation": settings.model_copy(update={"flush_batch_size": 1}),
    }
    shards = {}
    for label, s in variants.items():
        name = f"bench:inventory:{uuid.uuid4().hex[:6]}"
        shards[label] = InventoryShard.options(name=name, namespace=settings.ray_namespace).remote(
            name, env_for("inventory", s)
        )
        await shards[label].ping.remote()
    totals = {label: [0, 0.0, []] for label in variants}
    for _ in range(rounds):
        for label, shard in shards.items():
            done, lat = await _drive(shard, skus, concurrency, seconds)
            totals[label][0] += done
            totals[label][1] += seconds
            totals[label][2] += lat
    print(
        f"# inventory reservations, one shard, {concurrency} concurrent callers, "
        f"{rounds} x {seconds:g} s each, {os.cpu_count()} cores\n"
    )
    print("| variant | reservations/s | p50 ms | p95 ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for label, (done, secs, lat) in reversed(list(totals.items())):
        rate = done / secs
        base = base or rate
        print(
            f"| {label} | {rate:.0f} | {_p(lat, 0.5):.1f} | {_p(lat, 0.95):.1f} | "
            f"{rate / base:.2f} |"
        )
    for shard in shards.values():
        ray.kill(shard, no_restart=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency, args.rounds))
