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
p95 at the same count, and p95 minus healthz's p95 (what the route itself adds).
The 100,000-product figures come from ``loadtests.search_engines`` (same
index, in process), since that catalog is not what ``agora up`` seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Callable
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


async def main_async(args: argparse.Namespace) -> None:
    counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    limits = httpx.Limits(max_connections=max(counts) * 2)
    print(f"{args.seconds:.0f} s per scenario and client count, {args.url}")
    async with httpx.AsyncClient(base_url=args.url, timeout=30, limits=limits) as client:
        assert (await client.get("/readyz")).status_code == 200
        for clients in counts:
            report(clients, await measure(client, clients, args.seconds, args.rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
