"""Search and suggest latency at 1 and 8 concurrent clients, against /healthz in the same run.

    .venv/bin/python -m loadtests.bench_search [--url http://127.0.0.1:8000] [--seconds 10]
        [--clients 1,8]

Runs against a system ``agora up`` started (the demo catalog). For each count
in ``--clients`` (1 shows the floor of one request with no queueing; 8 is the
issue's target), the scenarios are interleaved in rounds so machine noise hits
them alike, each with that many closed-loop clients:

  * ``healthz``: the baseline, an answer with no work (proxy + Serve + FastAPI);
  * ``search (fresh)``: the judged queries and plain words, with filters, sorts
    and facets, each request made unique by its ``min_price`` so no cached
    body answers (the index does the work every time);
  * ``search (repeat)``: the same few queries over and over (cached bodies);
  * ``suggest``: prefixes of the judged queries, with typos.

Prints p50/p95 per scenario and client count, p95 as a multiple of healthz's
p95 at the same count, and p95 minus healthz's p95 (what the route itself adds),
with the catalog's size (what the API lists) and the box's load average.

``--edits N`` also times N product edits (an operator's ``PATCH
/v1/admin/products/{sku}`` renaming it with a fresh word) until the word finds
the product in search *and* its page shows it, polling every 10 ms (the
issue's "visible within 1 s"). It makes an operator with ``agora admin
create``, so run it with the system's settings (same ``AGORA_VAR_DIR``); the
names are put back afterwards.

The 100,000-product catalog over HTTP: start a system on an empty database
seeded with it, e.g. ``AGORA_VAR_DIR=/tmp/agora-100k AGORA_SEED_PRODUCTS=100000
agora up`` (the seed only fills an empty catalog; each API replica builds its
index at start-up, ~30 s at that size), and point this at it.
``loadtests.search_engines`` measures the same index in process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from loadtests.search_judged import load

SORTS = ["relevance", "price_asc", "price_desc", "newest", "rating", "popularity"]
PLAIN = ["black", "wireless", "shoes", "coffee", "dog food", "premium", "kit", "book", "red"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scenarios() -> dict[str, Callable[[int], tuple[str, dict[str, Any]]]]:
    queries = [c["q"] for c in load()["queries"]] + PLAIN
    prefixes = [q[: max(2, len(q) // 2)] for q in queries]
    counter = itertools.count()

    def fresh(i: int) -> tuple[str, dict[str, Any]]:
        n = next(counter)
        return "/v1/products", {
            "q": queries[n % len(queries)],
            "sort": SORTS[n % len(SORTS)],
            "min_price": n % 100_000,  # unique: no cached body
            "limit": 20,
        }

    def repeat(i: int) -> tuple[str, dict[str, Any]]:
        return "/v1/products", {"q": PLAIN[i % 3], "limit": 20}

    def suggest(i: int) -> tuple[str, dict[str, Any]]:
        return "/v1/search/suggest", {"q": prefixes[random.randrange(len(prefixes))]}

    def healthz(i: int) -> tuple[str, dict[str, Any]]:
        return "/healthz", {}

    return {
        "healthz": healthz,
        "search (fresh)": fresh,
        "search (repeat)": repeat,
        "suggest": suggest,
    }


async def drive(
    client: httpx.AsyncClient,
    make: Callable[[int], tuple[str, dict[str, Any]]],
    clients: int,
    seconds: float,
) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.monotonic() < deadline:
            path, params = make(i)
            started = time.perf_counter()
            reply = await client.get(path, params=params)
            latencies.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                raise RuntimeError(f"{path} {params}: {reply.status_code} {reply.text[:200]}")
            i += clients

    await asyncio.gather(*(worker(w) for w in range(clients)))
    return latencies


async def measure(
    client: httpx.AsyncClient, clients: int, seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Latencies per scenario at ``clients`` concurrent clients, interleaved in rounds."""
    makers = scenarios()
    samples: dict[str, list[float]] = {name: [] for name in makers}
    for make in makers.values():  # warm every path once
        await drive(client, make, clients, 0.5)
    for _ in range(rounds):
        for name, make in makers.items():
            samples[name] += await drive(client, make, clients, seconds / rounds)
    return samples


def report(clients: int, samples: dict[str, list[float]]) -> None:
    base = _pct(samples["healthz"], 0.95)
    print(f"\n{clients} concurrent client(s)")
    print(
        f"{'scenario':18} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'p95 / healthz':>14} {'p95 - healthz':>14}"
    )
    for name, values in samples.items():
        p50, p95 = statistics.median(values), _pct(values, 0.95)
        print(
            f"{name:18} {len(values):8d} {p50:8.1f} {p95:8.1f} {p95 / base:14.2f}"
            f" {p95 - base:11.1f} ms"
        )


async def catalog_size(client: httpx.AsyncClient) -> int:
    """Products the API lists (the unfiltered list's category facet counts)."""
    reply = await client.get("/v1/products", params={"limit": 1})
    return sum(reply.json()["facets"]["category"].values())


async def operator(client: httpx.AsyncClient) -> dict[str, str]:
    """A new operator (the CLI is the only way to make one), logged in."""
    email, password = f"bench-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
    await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "agora"), "admin", "create", email, "--password-stdin"],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    tokens = await client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": password}
    )
    tokens.raise_for_status()
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


async def edits(client: httpx.AsyncClient, count: int) -> None:
    """Seconds from an operator's PATCH to the edit showing in search and on the page."""
    headers = await operator(client)
    skus = [
        p["sku"] for p in (await client.get("/v1/products", params={"limit": 50})).json()["items"]
    ]
    after_reply: list[float] = []
    after_request: list[float] = []
    for n in range(count):
        sku = skus[n % len(skus)]
        name = (await client.get(f"/v1/products/{sku}")).json()["name"]
        word = f"zq{uuid.uuid4().hex[:10]}"
        started = time.perf_counter()
        reply = await client.patch(
            f"/v1/admin/products/{sku}", json={"name": f"{name} {word}"}, headers=headers
        )
        replied = time.perf_counter()
        reply.raise_for_status()
        while True:
            found = (await client.get("/v1/products", params={"q": word})).json()["items"]
            page = (await client.get(f"/v1/products/{sku}")).json()
            if [p["sku"] for p in found] == [sku] and word in page["name"]:
                break
            if time.perf_counter() - started > 30:
                raise RuntimeError(f"edit of {sku} not visible after 30 s")
            await asyncio.sleep(0.01)
        seen = time.perf_counter()
        after_request.append(seen - started)
        after_reply.append(seen - replied)
        restored = await client.patch(
            f"/v1/admin/products/{sku}", json={"name": name}, headers=headers
        )
        restored.raise_for_status()
        await asyncio.sleep(0.2)
    print(f"\n{count} edits (PATCH name -> found by search and shown on the page), seconds")
    for label, values in (("from the PATCH sent", after_request), ("from its 200", after_reply)):
        print(
            f"  {label:20} p50 {statistics.median(values):.3f}  p95 {_pct(values, 0.95):.3f}"
            f"  max {max(values):.3f}  (> 1 s: {sum(v > 1.0 for v in values)})"
        )


async def main_async(args: argparse.Namespace) -> None:
    counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    limits = httpx.Limits(max_connections=max(counts) * 2)
    print(f"{args.seconds:.0f} s per scenario and client count, {args.url}")
    async with httpx.AsyncClient(base_url=args.url, timeout=30, limits=limits) as client:
        assert (await client.get("/readyz")).status_code == 200
        load = "/".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"catalog: {await catalog_size(client)} products; load average {load}")
        for clients in counts:
            report(clients, await measure(client, clients, args.seconds, args.rounds))
        if args.edits:
            await edits(client, args.edits)
        load = "/".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"\nload average at the end {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--edits", type=int, default=0, help="also time N product edits")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
