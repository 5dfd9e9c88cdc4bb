"""Checkout latency at 1, 8 and 32 concurrent shoppers, with a healthz baseline.

Each shopper (registered and logged in at the start) loops: add one unit to
its cart (not timed), then ``POST /v1/checkout`` with ``pm_card_visa`` and a
new Idempotency-Key (timed). Stock comes from products made for the run with
plenty on hand, so every checkout runs the whole saga: price, fraud, reserve,
charge (Stripe-compatible PSP), commit. A ``/healthz`` loop at the same
concurrency right before gives the baseline of the same run.

Needs the per-IP limits raised for one-machine load (see docs/PERFORMANCE.md):

    AGORA_API_REQUESTS_PER_IP=100000000 AGORA_AUTH_REQUESTS_PER_IP=100000 make run
    .venv/bin/python -m loadtests.bench_checkout [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid

import aiohttp

from loadtests.stock import bench_products

BASE = "http://127.0.0.1:8000"
ADDRESS = {
    "name": "Bench",
    "line1": "Rua A, 1",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


async def shopper(session: aiohttp.ClientSession) -> dict[str, str]:
    email, password = f"bench-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
    async with session.post(
        f"{BASE}/v1/auth/register", json={"email": email, "password": password, "name": "B"}
    ) as r:
        assert r.status == 201, await r.text()
    async with session.post(
        f"{BASE}/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    ) as r:
        body = await r.json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def summary(values: list[float], seconds: float) -> str:
    if not values:
        return "| - | - | - | - |"
    cuts = (
        statistics.quantiles(values, n=100, method="inclusive")
        if len(values) > 1
        else [values[0]] * 99
    )
    return f"| {len(values) / seconds:.1f} | {cuts[49]:.1f} | {cuts[94]:.1f} | {cuts[98]:.1f} |"


async def run(levels: list[int], seconds: float) -> None:
    skus = await bench_products("BCK", 64)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        shoppers = [await shopper(session) for _ in range(max(levels))]
        print("| concurrency | scenario | req/s | p50 ms | p95 ms | p99 ms | errors |")
        print("|---:|---|---:|---:|---:|---:|---|")
        for level in levels:
            for scenario in ("healthz", "checkout"):
                latencies: list[float] = []
                errors: dict[str, int] = {}
                deadline = time.monotonic() + seconds

                async def worker(
                    w: int,
                    scenario=scenario,
                    deadline=deadline,
                    latencies=latencies,
                    errors=errors,
                ) -> None:
                    headers = shoppers[w]
                    i = 0
                    while time.monotonic() < deadline:
                        i += 1
                        if scenario == "checkout":
                            sku = skus[(w * 7 + i) % len(skus)]
                            async with session.post(
                                f"{BASE}/v1/cart/items", headers=headers, json={"sku": sku}
                            ) as r:
                                await r.read()
                            start = time.perf_counter()
                            async with session.post(
                                f"{BASE}/v1/checkout",
                                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                                json={
                                    "shipping_address": ADDRESS,
                                    "shipping_method": "standard",
                                    "payment": {"method": "card", "token": "pm_card_visa"},
                                },
                            ) as r:
                                await r.read()
                                status = r.status
                        else:
                            start = time.perf_counter()
                            async with session.get(f"{BASE}/healthz") as r:
                                await r.read()
                                status = r.status
                        latencies.append((time.perf_counter() - start) * 1000)
                        if status >= 300:
                            errors[str(status)] = errors.get(str(status), 0) + 1

                await asyncio.gather(*[worker(w) for w in range(level)])
                print(f"| {level} | {scenario} {summary(latencies, seconds)} {errors or 0} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    asyncio.run(run([int(x) for x in args.concurrency.split(",")], args.seconds))
