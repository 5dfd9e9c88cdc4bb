"""Checkout latency at 1, 8 and 32 concurrent shoppers, with a healthz baseline.

Each shopper (registered and logged in at the start) loops: add one unit to
its cart (not timed), then ``POST /v1/checkout`` with ``pm_card_visa`` and a
new Idempotency-Key (timed). Stock comes from products made for the run with
plenty on hand, so every checkout runs the whole saga: price, fraud, reserve,
charge (Stripe-compatible PSP), commit. A ``/healthz`` loop at the same
concurrency right before gives the baseline of the same run.

A ``psp`` scenario at the same concurrency charges the same PSP directly with
the official ``stripe`` SDK (create + confirm, as the adapter does): the PSP's
own share of a checkout. A ``202`` (the saga outlived ``checkout_wait_s``) is
counted apart. After the run the integrity checks read PostgreSQL: units sold
by confirmed orders equal the stock that left the shelves (no oversell), no
stock row is negative, and every confirmed order has exactly one succeeded
payment (no double charge).

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
import stripe

from cluster.db import connect
from cluster.services import service_urls
from cluster.settings import get_settings
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
        psp_http = stripe.AIOHTTPClient()
        psp = stripe.StripeClient(
            get_settings().stripe_api_key.get_secret_value(),
            base_addresses={"api": service_urls().stripe},
            http_client=psp_http,
            max_network_retries=0,
        )
        for level in levels:
            for scenario in ("healthz", "psp", "checkout"):
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
                        elif scenario == "psp":
                            start = time.perf_counter()
                            status = await psp_charge(psp)
                        else:
                            start = time.perf_counter()
                            async with session.get(f"{BASE}/healthz") as r:
                                await r.read()
                                status = r.status
                        latencies.append((time.perf_counter() - start) * 1000)
                        if status >= 300 or status == 202:
                            errors[str(status)] = errors.get(str(status), 0) + 1

                await asyncio.gather(*[worker(w) for w in range(level)])
                print(f"| {level} | {scenario} {summary(latencies, seconds)} {errors or 0} |")
        await psp_http.close_async()
    await integrity(skus)


async def psp_charge(psp: stripe.StripeClient) -> int:
    """One card charge straight at the PSP, as the adapter makes it (create, confirm)."""
    try:
        intent = await psp.v1.payment_intents.create_async(
            {"amount": 5000, "currency": "brl", "payment_method": "pm_card_visa"},
            options={"idempotency_key": uuid.uuid4().hex},
        )
        intent = await psp.v1.payment_intents.confirm_async(intent.id)
    except stripe.StripeError:
        return 599
    return 201 if intent.status == "succeeded" else 402


async def integrity(skus: list[str]) -> None:
    """No oversell, no negative stock, one succeeded payment per confirmed order."""
    await asyncio.sleep(1.0)  # the last write-behind window
    conn = await connect(service_urls().database)
    try:
        sold = await conn.fetchval(
            "SELECT COALESCE(sum((l->>'quantity')::int), 0) FROM orders o,"
            " jsonb_array_elements(o.data->'lines') l"
            " WHERE o.status = 'confirmed' AND l->>'sku' = ANY($1::text[])",
            skus,
        )
        left = await conn.fetchval(
            "SELECT sum(1000000 - on_hand) FROM inventory WHERE sku = ANY($1::text[])", skus
        )
        negative = await conn.fetchval(
            "SELECT count(*) FROM inventory WHERE sku = ANY($1::text[])"
            " AND (on_hand < 0 OR on_hand < reserved)",
            skus,
        )
        unpaid_or_double = await conn.fetchval(
            "SELECT count(*) FROM orders o WHERE o.status = 'confirmed'"
            " AND EXISTS (SELECT 1 FROM jsonb_array_elements(o.data->'lines') l"
            "             WHERE l->>'sku' = ANY($1::text[]))"
            " AND (SELECT count(*) FROM payments p WHERE p.key = o.order_id"
            "      AND p.status = 'succeeded') <> 1",
            skus,
        )
    finally:
        await conn.close()
    print()
    print(f"units sold by confirmed orders: {sold}; units gone from stock: {left}")
    print(f"stock rows negative or over-reserved: {negative}")
    print(f"confirmed orders without exactly one succeeded payment: {unpaid_or_double}")
    ok = sold == left and negative == 0 and unpaid_or_double == 0
    print(f"integrity: {'OK' if ok else 'FAILED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16,32")
    args = parser.parse_args()
    asyncio.run(run([int(x) for x in args.concurrency.split(",")], args.seconds))
