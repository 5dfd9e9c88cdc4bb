"""The shopper mix after Online Boutique's load generator, paced and closed-loop.

Usage (against a running Agora with the per-IP limits raised for one-machine load)::

    AGORA_API_REQUESTS_PER_IP=100000000 AGORA_AUTH_REQUESTS_PER_IP=100000 make run
    .venv/bin/python -m loadtests.mix [--users 40] [--seconds 30] [--step 4,8,16,24,32,48]

Every virtual shopper is a registered, logged-in user with its own cart, and
picks its next task by weight, as Online Boutique's ``loadgenerator`` does:
browse a product 10, view the cart 3, add to cart 2, the index (first catalog
page) 1, checkout 1 (card ``pm_card_visa``, a new ``Idempotency-Key``), plus
search 2 (``/v1/products?q=``) and recommendations 1 (``/v1/recommendations``;
while that route does not exist the first catalog page sorted by the default
order stands in, and the report says so).

Three measurements in one run, by the same client:

``paced``
    ``--users`` shoppers, each waiting 0.5-1.5 s between tasks (Online Boutique
    waits 1-10 s; this is denser). Gate: p95 < 100 ms over the whole mix and
    < 1 % errors.
``step``
    the same mix closed-loop (no think time) at each ``--step`` concurrency,
    until p95 passes 100 ms: the highest rate at p95 < 100 ms.
``ceilings``
    closed-loop ``GET /healthz`` on Agora and ``GET /`` on a plain uvicorn
    hello-world (``loadtests.hello``, started here on a free port), at the
    largest step level: the step's best rate is reported as a fraction of both.

Checkout SKUs come from products made for the run with 1,000,000 units each.
Only loopback targets; every loop stops by itself. Exit 0 when the paced gate
passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtests.bench import loopback_base_url
from loadtests.stock import bench_products

WEIGHTS = {
    "browse": 10,
    "view_cart": 3,
    "add_to_cart": 2,
    "index": 1,
    "checkout": 1,
    "search": 2,
    "recommendations": 1,
}
WORDS = ["camiseta", "fone", "cafe", "mesa", "livro", "tenis", "bola", "caneca"]
ADDRESS = {
    "name": "Mix Shopper",
    "line1": "Rua A, 1",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}
P95_TARGET_MS = 100.0


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    substituted: Counter[str] = field(default_factory=Counter)

    def add(self, task: str, ms: float, status: int | None) -> None:
        self.latencies.setdefault(task, []).append(ms)
        if status is None or status >= 400:
            self.errors[f"{task}:{status}"] += 1

    def all(self) -> list[float]:
        return [v for values in self.latencies.values() for v in values]


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[94]


@dataclass
class Shopper:
    headers: dict[str, str]
    lines: int = 0


class Mix:
    def __init__(
        self, session: aiohttp.ClientSession, base: str, skus: list[str], stock: list[str]
    ):
        self.session = session
        self.base = base
        self.skus = skus
        self.stock = stock
        self.has_recommendations = True

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int | None, float]:
        start = time.perf_counter()
        try:
            async with self.session.request(method, self.base + path, **kwargs) as resp:
                await resp.read()
                status: int | None = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = None
        return status, (time.perf_counter() - start) * 1000

    async def shopper(self) -> Shopper:
        email, password = f"mix-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
        body = {"email": email, "password": password, "name": "Mix"}
        async with self.session.post(f"{self.base}/v1/auth/register", json=body) as r:
            if r.status != 201:
                raise RuntimeError(f"register answered {r.status}: {await r.text()}")
        form = {"grant_type": "password", "username": email, "password": password}
        async with self.session.post(f"{self.base}/v1/auth/token", data=form) as r:
            token = (await r.json())["access_token"]
        return Shopper({"Authorization": f"Bearer {token}"})

    async def task(self, name: str, who: Shopper, tally: Tally) -> None:
        h = who.headers
        if name == "browse":
            status, ms = await self.call("GET", f"/v1/products/{random.choice(self.skus)}")
        elif name == "view_cart":
            status, ms = await self.call("GET", "/v1/cart", headers=h)
        elif name == "add_to_cart":
            if who.lines >= 40:
                await self.call("DELETE", f"/v1/cart/items/{self.stock[0]}", headers=h)
                who.lines = 0
            body = {"sku": random.choice(self.stock), "quantity": 1}
            status, ms = await self.call("POST", "/v1/cart/items", json=body, headers=h)
            who.lines += 1
        elif name == "index":
            status, ms = await self.call("GET", "/v1/products?limit=20")
        elif name == "search":
            status, ms = await self.call("GET", f"/v1/products?q={random.choice(WORDS)}&limit=20")
        elif name == "recommendations":
            if self.has_recommendations:
                status, ms = await self.call("GET", "/v1/recommendations?limit=8", headers=h)
                if status == 404:
                    self.has_recommendations = False
            if not self.has_recommendations:
                tally.substituted["recommendations"] += 1
                status, ms = await self.call("GET", "/v1/products?limit=8")
        else:
            if who.lines == 0:
                body = {"sku": random.choice(self.stock), "quantity": 1}
                await self.call("POST", "/v1/cart/items", json=body, headers=h)
            checkout = {
                "shipping_address": ADDRESS,
                "shipping_method": "standard",
                "payment": {"method": "card", "token": "pm_card_visa"},
            }
            headers = {**h, "Idempotency-Key": uuid.uuid4().hex}
            status, ms = await self.call("POST", "/v1/checkout", json=checkout, headers=headers)
            who.lines = 0
        tally.add(name, ms, status)

    async def run(self, shoppers: list[Shopper], seconds: float, think: bool) -> Tally:
        tally = Tally()
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        deadline = time.monotonic() + seconds

        async def loop(who: Shopper) -> None:
            if think:
                await asyncio.sleep(random.uniform(0, 1.0))
            while time.monotonic() < deadline:
                await self.task(random.choices(names, weights)[0], who, tally)
                if think:
                    await asyncio.sleep(random.uniform(0.5, 1.5))

        await asyncio.gather(*(loop(s) for s in shoppers))
        return tally


async def closed_loop(session: aiohttp.ClientSession, url: str, n: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.get(url) as r:
                await r.read()
            done += 1

    await asyncio.gather(*(loop() for _ in range(n)))
    return done / seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def catalog_skus(session: aiohttp.ClientSession, base: str) -> list[str]:
    async with session.get(f"{base}/v1/products?limit=100") as r:
        return [item["sku"] for item in (await r.json())["items"]]


def line(label: str, tally: Tally, seconds: float) -> str:
    values = tally.all()
    errors = sum(tally.errors.values())
    rate = len(values) / seconds
    return (
        f"| {label} | {rate:.1f} | {statistics.median(values):.1f} | {p95(values):.1f} |"
        f" {100 * errors / max(1, len(values)):.2f}% |"
    )


async def main_async(args: argparse.Namespace, port: int) -> int:
    base = loopback_base_url(args.base_url)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        skus = await catalog_skus(session, base)
        stock = await bench_products("MIX", 64)
        mix = Mix(session, base, skus, stock)
        levels = [int(x) for x in args.step.split(",")]
        shoppers = [await mix.shopper() for _ in range(max(args.users, max(levels)))]
        print(f"# shopper mix: weights {WEIGHTS}")
        print("| run | req/s | p50 ms | p95 ms | errors |")
        print("|---|---:|---:|---:|---:|")
        paced = await mix.run(shoppers[: args.users], args.seconds, think=True)
        print(line(f"paced, {args.users} users", paced, args.seconds))
        best = 0.0
        for n in levels:
            tally = await mix.run(shoppers[:n], args.step_seconds, think=False)
            print(line(f"closed loop, {n} clients", tally, args.step_seconds))
            if p95(tally.all()) >= P95_TARGET_MS:
                break
            best = max(best, len(tally.all()) / args.step_seconds)
        top = levels[-1]
        healthz = await closed_loop(session, f"{base}/healthz", top, args.step_seconds)
        ceiling = await closed_loop(session, f"http://127.0.0.1:{port}/", top, args.step_seconds)
        print()
        print(f"best mix rate at p95 < {P95_TARGET_MS:.0f} ms: {best:.1f} req/s")
        print(f"/healthz closed loop at {top}: {healthz:.1f} req/s")
        print(f"hello-world (plain uvicorn) at {top}: {ceiling:.1f} req/s")
        print(
            f"mix / hello-world ceiling: {best / ceiling:.2f}x;"
            f" mix / healthz: {best / healthz:.2f}x"
        )
        for task, values in sorted(paced.latencies.items()):
            print(f"  paced {task}: n={len(values)} p95={p95(values):.1f} ms")
        if paced.errors:
            print(f"  paced errors: {dict(paced.errors)}")
        if paced.substituted:
            print(f"  substituted (route not built yet): {dict(paced.substituted)}")
        values = paced.all()
        errors = sum(paced.errors.values()) / max(1, len(values))
        ok = p95(values) < P95_TARGET_MS and errors < 0.01
        print(f"paced gate (p95 < {P95_TARGET_MS:.0f} ms, < 1% errors): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--step", default="4,8,16,24,32,48")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    port = free_port()
    hello = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "loadtests.hello:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ},
    )
    try:
        return asyncio.run(main_async(args, port))
    finally:
        hello.terminate()
        hello.wait(10)


if __name__ == "__main__":
    sys.exit(main())
