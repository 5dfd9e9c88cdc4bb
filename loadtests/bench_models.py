"""Model scoring latency: raw onnxruntime vs through Ray Serve, batches of 1, 16 and 64.

In the same run, for each batch size ``n``:

- ``raw``: ``FraudModel.score`` on ``n`` orders' raw facts in this process
  (features with polars + one onnxruntime run): the baseline;
- ``serve-batch``: one ``FraudScorer.score_many`` call carrying ``n`` orders
  (the handle's round trip + the same work in the replica);
- ``serve-concurrent``: ``n`` concurrent ``FraudScorer.score`` calls of one
  order each, which ``@serve.batch`` gathers into batches (what the checkout
  saga does under load);

and the same for the ``Recommender`` (``recommend``). Then checkout's fraud
step as the order shard runs it (``FraudAdapter.screen``: facts from PostgreSQL,
then the model or the rules): rules only vs with ``FraudScorer`` under the budget. Prints p50/p95 in
milliseconds and each Serve figure as a ratio of the raw one. ``--autoscale S``
then bursts ``Recommender`` with 64 callers for S seconds and prints its running
replicas every second during the burst and the minute after (Serve autoscaling
up and back down). The burst runs first, from an idle system (it waits until
``Recommender`` is down to its minimum), so the trace shows the rise from one
replica; ``--csv PATH`` also writes the trace (``t_s,replicas,calls``) and an
ASCII chart is printed after it. ``--screened MIN`` only counts the orders of
the last MIN minutes by who screened them (``model:<version>`` in
``fraud.reasons`` or the rules), to check a checkout benchmark's run. Needs a
running system (``make run``):

    .venv/bin/python -m loadtests.bench_models [--rounds 200] [--autoscale 30] [--csv PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cluster import rayenv  # first: Ray reads its environment when it is first imported
from cluster.adapters.order_ports import FraudAdapter, ServeFraudModel
from cluster.cli import connect_ray
from cluster.db import create_pool
from cluster.services import service_urls
from cluster.settings import get_settings
from serve.models.deployments import FRAUD, RECOMMENDER, handle, running_replicas
from serve.models.scoring import FraudModel, RecommenderModel, compose
from serve.models.simulation import simulate

SIZES = (1, 16, 64)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(rounds: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(min(20, rounds)):  # warm-up
        await call()
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def line(name: str, n: int, samples: list[float], base: list[float] | None) -> str:
    p50, p95 = statistics.median(samples), pct(samples, 0.95)
    ratio = ""
    if base is not None:
        ratio = f"  x{p50 / statistics.median(base):6.1f} p50  x{p95 / pct(base, 0.95):6.1f} p95"
    return f"{name:<28} n={n:<3} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms{ratio}"


async def main(rounds: int, burst_s: float = 0.0, csv_path: str | None = None) -> None:
    settings = get_settings()
    rayenv.apply()
    connect_ray(settings)
    if burst_s:
        await autoscale(burst_s, settings.model_min_replicas, csv_path)
    sim = simulate()
    facts = [
        {k: r[k] for k in FraudModel().card["input"]["raw_facts"]}
        for r in sim.orders.head(64).iter_rows(named=True)
    ]
    fraud_raw, rec_raw = FraudModel(threads=1), RecommenderModel(threads=1)
    fraud, rec = handle(FRAUD), handle(RECOMMENDER)
    skus = rec_raw.skus
    requests = [
        {"history": {skus[i * 7 % len(skus)]: 3.0}, "recent": [skus[i]], "exclude": [skus[i]]}
        for i in range(64)
    ]
    print(f"fraud {fraud_raw.version}, recommender {rec_raw.version}; {rounds} rounds per figure")
    for n in SIZES:
        batch = facts[:n]

        async def raw_fraud(b: list[dict[str, Any]] = batch) -> Any:
            return fraud_raw.score(b)

        async def serve_many(b: list[dict[str, Any]] = batch) -> Any:
            return await fraud.score_many.remote(b)

        async def serve_each(b: list[dict[str, Any]] = batch) -> Any:
            return await asyncio.gather(*(fraud.score.remote(f) for f in b))

        base = await timed(rounds, raw_fraud)
        print(line("fraud raw onnxruntime", n, base, None))
        print(line("fraud serve one call", n, await timed(rounds, serve_many), base))
        print(line("fraud serve n concurrent", n, await timed(rounds, serve_each), base))
    for n in SIZES:
        reqs = requests[:n]

        async def raw_rec(r: list[dict[str, Any]] = reqs) -> Any:
            return rec_raw.recommend(
                [compose(x["history"], x["recent"]) for x in r], [x["exclude"] for x in r], 10
            )

        async def serve_rec(r: list[dict[str, Any]] = reqs) -> Any:
            return await asyncio.gather(*(rec.recommend.remote({**x, "k": 10}) for x in r))

        base = await timed(rounds, raw_rec)
        print(line("recommender raw onnxruntime", n, base, None))
        print(line("recommender serve concurrent", n, await timed(rounds, serve_rec), base))
    await fraud_step(rounds)


def now_ms() -> int:
    return int(time.time() * 1000)


async def fraud_step(rounds: int) -> None:
    settings = get_settings()
    pool = await create_pool(service_urls(settings).database, max_size=2)
    user = await pool.fetchval("SELECT user_id FROM users LIMIT 1")

    async def open_pool() -> Any:
        return pool

    review, block = settings.fraud_review_score, settings.fraud_block_score
    rules = FraudAdapter(open_pool, now_ms, review, block)
    model = FraudAdapter(
        open_pool, now_ms, review, block, ServeFraudModel(), settings.fraud_model_budget_ms
    )
    try:
        base = await timed(rounds, lambda: rules.screen("bench", user, 15_000, (1,), "BR"))
        print(line("checkout fraud step: rules", 1, base, None))
        with_model = await timed(rounds, lambda: model.screen("bench", user, 15_000, (1,), "BR"))
        print(line("checkout fraud step: model", 1, with_model, base))
        print(f"  model answered {model.model_answers}, fell back {model.fallbacks}")
    finally:
        await pool.close()


async def autoscale(seconds: float, floor: int, csv_path: str | None, tail_s: float = 75.0) -> None:
    rec = handle(RECOMMENDER)
    skus = RecommenderModel().skus
    for _ in range(120):  # start from an idle system: the minimum of replicas
        if running_replicas(RECOMMENDER) <= max(1, floor):
            break
        await asyncio.sleep(1.0)
    calls = 0
    trace: list[tuple[float, int, int]] = []
    started = time.monotonic()
    stop = started + seconds

    async def caller(i: int) -> None:
        nonlocal calls
        while time.monotonic() < stop:
            await rec.recommend.remote({"history": {skus[i]: 1.0}, "exclude": [skus[i]], "k": 10})
            calls += 1

    async def sample() -> None:
        while (t := time.monotonic() - started) < seconds + tail_s:
            replicas = running_replicas(RECOMMENDER)
            trace.append((t, replicas, calls))
            print(f"t={t:5.1f}s replicas={replicas} calls={calls}", flush=True)
            await asyncio.sleep(1.0)

    print(f"Recommender burst: 64 callers for {seconds:.0f}s, then idle {tail_s:.0f}s")
    await asyncio.gather(sample(), *(caller(i) for i in range(64)))
    if csv_path:
        rows = "".join(f"{t:.1f},{r},{c}\n" for t, r, c in trace)
        await asyncio.to_thread(Path(csv_path).write_text, "t_s,replicas,calls\n" + rows)
    top = max(r for _, r, _ in trace)
    print(f"replicas over time (one column per sample, burst until t={seconds:.0f}s):")
    for level in range(top, 0, -1):
        print(f"{level} |" + "".join("#" if r >= level else " " for _, r, _ in trace))
    print("  +" + "".join("B" if t < seconds else "-" for t, _, _ in trace))


async def screened(minutes: float) -> None:
    """Orders of the last ``minutes`` by who screened them: the model or the rules."""
    pool = await create_pool(service_urls(get_settings()).database, max_size=1)
    try:
        rows = await pool.fetch(
            "SELECT CASE WHEN data->'fraud'->'reasons'->>0 LIKE 'model:%' THEN 'model'"
            " ELSE 'rules' END AS who, status, count(*) AS n FROM orders"
            " WHERE created_at > now() - make_interval(secs => $1) GROUP BY 1, 2 ORDER BY 1, 2",
            minutes * 60,
        )
    finally:
        await pool.close()
    for r in rows:
        print(f"screened by {r['who']}: {r['n']} orders {r['status']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--autoscale", type=float, default=0.0, help="burst seconds (0: skip)")
    parser.add_argument("--csv", default=None, help="write the autoscaling trace here")
    parser.add_argument("--screened", type=float, default=0.0, help="only count orders (minutes)")
    args = parser.parse_args()
    if args.screened:
        asyncio.run(screened(args.screened))
    else:
        asyncio.run(main(args.rounds, args.autoscale, args.csv))
