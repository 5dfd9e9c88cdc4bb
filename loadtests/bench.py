"""Closed-loop HTTP benchmark for a locally running Agora API.

Usage::

    python -m loadtests.bench [--base-url http://127.0.0.1:8000] [--duration 10]
                              [--concurrency 1,8,32] [--out docs/bench-latest.json]

For each concurrency level N, N worker coroutines share one ``aiohttp.ClientSession``
(``TCPConnector(limit=0)``) and each sends its next request as soon as the previous
one has answered (closed loop). Three scenarios are measured in the same run:

``healthz``
    ``GET /healthz``: the baseline cost of a request through the proxy and Serve.
``product_page``
    ``GET /v1/products/{sku}`` over ~200 real SKUs fetched from the catalog at start.
``add_to_cart``
    ``POST /v1/cart/items`` with quantity 1. Each worker owns a few anonymous carts
    (created with ``GET /v1/cart``) and adds a different SKU every time, so no line
    passes quantity 1 and a cart is replaced by a new one once it holds 40 lines,
    well inside the 99-per-line and 50-lines-per-cart limits. Creating a cart is
    not counted as a sample, but happens inside the measured window.

Each scenario gets a warm-up (not counted) per concurrency level; then the measured
time is cut into slices (``--slice``, 1 s by default) run round-robin, with the
scenario order rotated every round, so that noise from the machine hits all three
scenarios alike. A worker stops starting requests at the end of its slice; requests
already in flight are awaited and counted.

Per scenario the report gives requests, errors (non-2xx statuses and exceptions,
by kind), throughput (all answered requests per second of measured time), and
p50/p95/p99 latency over every answered request (errors included, exceptions
excluded), plus the throughput ratio to ``healthz`` at the same concurrency. The
generator runs on the same host as the server, so on a small machine it competes
with the server for CPU: compare runs made on the same host, not absolute figures.

Safety: the generator only talks to ``--base-url``, which must be a loopback address
(``localhost``, ``127.0.0.0/8`` or ``::1``); redirects are not followed; it stops by
itself after the configured time. Exit status is 0, or 1 when the target cannot be
reached or its catalog cannot be read, or 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOGIN_SAMPLES = 10
SCENARIOS = ("healthz", "product_page", "add_to_cart", "cart_anonymous", "cart_authenticated")
SKU_TARGET = 200
CARTS_PER_WORKER = 3
MAX_LINES_PER_CART = 40
REQUEST_TIMEOUT_S = 5.0
ERROR_BACKOFF_S = 0.05


class Unreachable(Exception):
    """The target API could not be reached or did not answer as expected."""


def loopback_base_url(raw: str) -> str:
    """Return ``raw`` without a trailing slash, or raise ``ValueError`` if not loopback."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{raw!r}: scheme must be http or https")
    host = parts.hostname
    if not host:
        raise ValueError(f"{raw!r}: no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{raw!r}: only scheme, host, port and path are allowed")
    if host != "localhost":
        try:
            is_loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            is_loopback = False
        if not is_loopback:
            raise ValueError(f"{raw!r}: refusing non-loopback host {host!r}")
    return raw.rstrip("/")


def parse_concurrency(raw: str) -> list[int]:
    try:
        levels = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {raw!r}"
        ) from exc
    if not levels or any(n < 1 or n > 1024 for n in levels):
        raise argparse.ArgumentTypeError("each concurrency level must be between 1 and 1024")
    return levels


def positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {raw!r}")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {raw!r}")
    return value


@dataclass
class Samples:
    """Raw outcomes of one scenario at one concurrency level."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def ok(self, latency_ms: float) -> None:
        self.latencies_ms.append(latency_ms)

    def bad(self, kind: str, latency_ms: float | None = None) -> None:
        self.errors[kind] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)


def percentile_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    if len(values) == 1:
        p50 = p95 = p99 = values[0]
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        p50, p95, p99 = cuts[49], cuts[94], cuts[98]
    return {
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "p99_ms": round(p99, 3),
        "mean_ms": round(statistics.fmean(values), 3),
        "max_ms": round(max(values), 3),
    }


def summarise(concurrency: int, scenario: str, samples: Samples) -> dict[str, Any]:
    answered = len(samples.latencies_ms)
    exceptions = sum(n for kind, n in samples.errors.items() if not kind.isdigit())
    requests = answered + exceptions
    errors = sum(samples.errors.values())
    elapsed = samples.elapsed_s
    return {
        "concurrency": concurrency,
        "scenario": scenario,
        "requests": requests,
        "ok": requests - errors,
        "errors": errors,
        "errors_by_kind": dict(sorted(samples.errors.items())),
        "elapsed_s": round(elapsed, 3),
        "rps": round(answered / elapsed, 1) if elapsed > 0 else 0.0,
        "ok_rps": round((requests - errors) / elapsed, 1) if elapsed > 0 else 0.0,
        **percentile_summary(samples.latencies_ms),
    }


@dataclass
class Cart:
    token: str
    lines: int
    first_sku: int


class Bench:
    """Shared state of one benchmark run: the session, the SKUs and the carts."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, skus: list[str]) -> None:
        self.session = session
        self.base_url = base_url
        self.skus = skus
        self.carts: dict[int, list[Cart]] = {}
        self.cart_turn: dict[int, int] = {}
        self.sku_turn: dict[int, int] = {}
        self.new_cart_seq = itertools.count()
        self.credentials: tuple[str, str] = ("", "")
        self.login_ms: list[float] = []
        self.bearer: dict[str, str] = {}
        self.anon_token = ""

    async def new_cart(self) -> Cart:
        async with self.session.get(f"{self.base_url}/v1/cart", allow_redirects=False) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else None
        token = (body or {}).get("cart_token") or resp.headers.get("X-Cart-Token")
        if not token:
            raise RuntimeError(f"GET /v1/cart answered {resp.status} without a cart token")
        first_sku = (next(self.new_cart_seq) * MAX_LINES_PER_CART) % len(self.skus)
        return Cart(token=token, lines=0, first_sku=first_sku)

    async def request(self, samples: Samples, method: str, path: str, **kwargs: Any) -> int | None:
        start = time.perf_counter()
        try:
            async with self.session.request(
                method, f"{self.base_url}{path}", allow_redirects=False, **kwargs
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            samples.bad(type(exc).__name__)
            await asyncio.sleep(ERROR_BACKOFF_S)
            return None
        latency_ms = (time.perf_counter() - start) * 1000.0
        if 200 <= status < 300:
            samples.ok(latency_ms)
        else:
            samples.bad(str(status), latency_ms)
        return status

    async def login(self) -> None:
        """Register a throw-away shopper and keep an access token for authenticated reads."""
        import secrets
        import uuid

        email = f"bench-{uuid.uuid4().hex}@example.com"
        password = secrets.token_urlsafe(18)
        async with self.session.post(
            f"{self.base_url}/v1/auth/register",
            json={"email": email, "password": password, "name": "Bench"},
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"register answered {resp.status}")
        self.credentials = (email, password)
        for _ in range(LOGIN_SAMPLES):
            start = time.perf_counter()
            async with self.session.post(
                f"{self.base_url}/v1/auth/token",
                data={"grant_type": "password", "username": email, "password": password},
            ) as resp:
                body = await resp.json(content_type=None)
            self.login_ms.append((time.perf_counter() - start) * 1000.0)
            if resp.status != 200:
                raise RuntimeError(f"login answered {resp.status}")
        self.bearer = {"Authorization": f"Bearer {body['access_token']}"}
        self.anon_token = (await self.new_cart()).token

    async def cart_anonymous(self, worker: int, samples: Samples) -> None:
        await self.request(samples, "GET", "/v1/cart", headers={"X-Cart-Token": self.anon_token})

    async def cart_authenticated(self, worker: int, samples: Samples) -> None:
        await self.request(samples, "GET", "/v1/cart", headers=self.bearer)

    async def healthz(self, worker: int, samples: Samples) -> None:
        await self.request(samples, "GET", "/healthz")

    async def product_page(self, worker: int, samples: Samples) -> None:
        turn = self.sku_turn.get(worker, worker * 7)
        self.sku_turn[worker] = turn + 1
        await self.request(samples, "GET", f"/v1/products/{self.skus[turn % len(self.skus)]}")

    async def add_to_cart(self, worker: int, samples: Samples) -> None:
        carts = self.carts.setdefault(worker, [])
        turn = self.cart_turn.get(worker, 0)
        self.cart_turn[worker] = turn + 1
        slot = turn % CARTS_PER_WORKER
        if slot >= len(carts) or carts[slot].lines >= MAX_LINES_PER_CART:
            try:
                cart = await self.new_cart()
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, ValueError) as exc:
                samples.bad(f"new_cart:{type(exc).__name__}")
                await asyncio.sleep(ERROR_BACKOFF_S)
                return
            if slot >= len(carts):  # a cancelled new_cart (slice end) may have skipped a slot
                carts.append(cart)
                slot = len(carts) - 1
            else:
                carts[slot] = cart
        cart = carts[slot]
        sku = self.skus[(cart.first_sku + cart.lines) % len(self.skus)]
        cart.lines += 1
        status = await self.request(
            samples,
            "POST",
            "/v1/cart/items",
            json={"sku": sku, "quantity": 1},
            headers={"X-Cart-Token": cart.token},
        )
        if status is not None and not 200 <= status < 300:
            cart.lines = MAX_LINES_PER_CART

    async def run_slice(
        self, scenario: str, concurrency: int, seconds: float, samples: Samples | None
    ) -> None:
        """Run ``concurrency`` closed-loop workers on ``scenario`` for ``seconds``."""
        step = getattr(self, scenario)
        sink = samples if samples is not None else Samples()
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            while time.perf_counter() < deadline:
                await step(index, sink)

        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker(i) for i in range(concurrency))),
            timeout=seconds + 2 * REQUEST_TIMEOUT_S + 5,
        )
        if samples is not None:
            samples.elapsed_s += time.perf_counter() - start


async def fetch_skus(session: aiohttp.ClientSession, base_url: str, target: int) -> list[str]:
    """About ``target`` real SKUs, spread over the catalog's categories."""

    async def page(params: dict[str, str]) -> dict[str, Any]:
        async with session.get(
            f"{base_url}/v1/products", params=params, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise Unreachable(f"GET /v1/products answered {resp.status}")
            return await resp.json(content_type=None)

    first = await page({"limit": "100"})
    categories = sorted((first.get("facets") or {}).get("category") or {})
    skus: list[str] = []
    if categories:
        per_category = min(100, -(-target // len(categories)))
        for category in categories:
            data = await page({"limit": str(per_category), "category": category})
            skus.extend(item["sku"] for item in data["items"])
    if len(skus) < target:
        data, seen = first, set(skus)
        while True:
            skus.extend(item["sku"] for item in data["items"] if item["sku"] not in seen)
            seen.update(skus)
            cursor = data.get("next_cursor")
            if len(skus) >= target or not cursor:
                break
            data = await page({"limit": "100", "cursor": cursor})
    if not skus:
        raise Unreachable("the catalog is empty")
    return skus[:target]


async def check_reachable(session: aiohttp.ClientSession, base_url: str) -> None:
    try:
        async with session.get(f"{base_url}/healthz", allow_redirects=False) as resp:
            await resp.read()
            if resp.status != 200:
                raise Unreachable(f"GET /healthz answered {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unreachable(f"{base_url} is not reachable: {type(exc).__name__}: {exc}") from exc


async def run(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await check_reachable(session, args.base_url)
        try:
            skus = await fetch_skus(session, args.base_url, SKU_TARGET)
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError) as exc:
            raise Unreachable(f"cannot read the catalog: {type(exc).__name__}: {exc}") from exc

        slice_s = min(args.slice, args.duration)
        rounds = max(1, round(args.duration / slice_s))
        slice_s = args.duration / rounds
        meta = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host_cores": os.cpu_count(),
            "host": platform.node(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "base_url": args.base_url,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "slice_s": round(slice_s, 3),
            "rounds": rounds,
            "concurrency": args.concurrency,
            "skus": len(skus),
        }
        print_header(meta)

        bench = Bench(session, args.base_url, skus)
        await bench.login()
        login = percentile_summary(bench.login_ms)
        meta["login_ms"] = login
        print(
            f"- login (argon2id verify + session + token), {LOGIN_SAMPLES} sequential: "
            f"p50 {fmt(login['p50_ms'])} ms, max {fmt(login['max_ms'])} ms\n"
        )
        results: list[dict[str, Any]] = []
        for concurrency in args.concurrency:
            if args.warmup > 0:
                for scenario in SCENARIOS:
                    await bench.run_slice(scenario, concurrency, args.warmup, None)
            collected = {scenario: Samples() for scenario in SCENARIOS}
            for round_no in range(rounds):
                shift = round_no % len(SCENARIOS)
                for scenario in SCENARIOS[shift:] + SCENARIOS[:shift]:
                    await bench.run_slice(scenario, concurrency, slice_s, collected[scenario])
            level = [summarise(concurrency, s, collected[s]) for s in SCENARIOS]
            baseline = level[0]["rps"]
            for row in level:
                row["ratio_vs_healthz"] = round(row["rps"] / baseline, 3) if baseline else None
            results.extend(level)
            print(f"  done: concurrency {concurrency}", file=sys.stderr, flush=True)
    return {"meta": meta, "results": results}


def print_header(meta: dict[str, Any]) -> None:
    print(f"# Agora bench — {meta['date']}")
    print()
    print(f"- host cores: {meta['host_cores']} (load generator runs on the same host)")
    print(f"- base URL: {meta['base_url']}")
    print(
        f"- {meta['duration_s']:g} s measured per scenario and concurrency, in "
        f"{meta['rounds']} interleaved slices of {meta['slice_s']:g} s; "
        f"{meta['warmup_s']:g} s warm-up each; {meta['skus']} SKUs"
    )
    print(flush=True)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| concurrency | scenario | req/s | p50 ms | p95 ms | p99 ms | errors | ratio vs healthz |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in results:
        errors = str(row["errors"])
        if row["errors_by_kind"]:
            kinds = ", ".join(f"{k}: {n}" for k, n in row["errors_by_kind"].items())
            errors = f"{errors} ({kinds})"
        lines.append(
            f"| {row['concurrency']} | {row['scenario']} | {fmt(row['rps'])} "
            f"| {fmt(row['p50_ms'])} | {fmt(row['p95_ms'])} | {fmt(row['p99_ms'])} "
            f"| {errors} | {fmt(row['ratio_vs_healthz'], 2)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="Closed-loop benchmark of healthz, product page and add-to-cart.",
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="loopback only")
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="measured seconds per scenario"
    )
    parser.add_argument(
        "--concurrency", type=parse_concurrency, default=[1, 8, 32], help="e.g. 1,8,32"
    )
    parser.add_argument(
        "--warmup", type=non_negative_float, default=1.0, help="uncounted seconds per scenario"
    )
    parser.add_argument(
        "--slice", type=positive_float, default=1.0, help="interleaving slice in seconds"
    )
    parser.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    args = parser.parse_args(argv)
    try:
        args.base_url = loopback_base_url(args.base_url)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except Unreachable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(report["results"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
