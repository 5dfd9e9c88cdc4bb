"""``agora scale`` under traffic: error rate and latency before, during and after.

Runs against the system ``agora up`` started. ``--clients`` shoppers add one unit of
a demo product to one of ``--carts`` anonymous carts through the HTTP API, paced at
``--rate`` requests a second in all; after ``--warm`` seconds each ``--step`` runs the
real command (``agora scale <step>``) in turn, ``--settle`` seconds apart. Reported:
requests and failures, p50/p95 per phase (the "before" phase is the baseline of the
same run), each command's duration and output, and whether every acknowledged add is
in its cart (read back through the API).

    .venv/bin/python -m loadtests.bench_scale --step cart=8 --step cart=4
    .venv/bin/python -m loadtests.bench_scale --step api=2 --step api=1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter

import httpx

from cluster.settings import get_settings

SKUS = ("ELE-000001", "BOO-000001", "TOY-000001", "GAR-000001", "PET-000001")


def _scale(step: str) -> tuple[str, float, int]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "scale", *step.split(",")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return (done.stdout + done.stderr).strip(), time.monotonic() - started, done.returncode


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1000 if values else 0.0


async def run(args: argparse.Namespace) -> dict[str, object]:
    s = get_settings()
    base = f"http://{s.http_host}:{s.http_port}"
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    phase = ["before"]
    failures: list[str] = []
    acked: dict[str, Counter[str]] = {}
    stop = asyncio.Event()
    commands = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        carts = [(await http.get("/v1/cart")).json()["cart_token"] for _ in range(args.carts)]

        async def shopper(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                token, sku = rng.choice(carts), rng.choice(SKUS)
                started = time.monotonic()
                try:
                    reply = await http.post(
                        "/v1/cart/items",
                        json={"sku": sku, "quantity": 1},
                        headers={"X-Cart-Token": token},
                    )
                    ok, what = reply.status_code == 200, f"{reply.status_code} {reply.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, what = False, type(exc).__name__
                phases[phase[0]].append(time.monotonic() - started)
                if ok:
                    acked.setdefault(token, Counter())[sku] += 1
                else:
                    failures.append(what)
                pause = args.clients / args.rate - (time.monotonic() - started)
                await asyncio.sleep(max(0.0, pause))

        tasks = [asyncio.create_task(shopper(i)) for i in range(args.clients)]
        await asyncio.sleep(args.warm)
        for step in args.step:
            phase[0] = "during"
            out, took, code = await asyncio.to_thread(_scale, step)
            commands.append({"step": step, "seconds": round(took, 2), "rc": code, "output": out})
            phase[0] = "after"
            await asyncio.sleep(args.settle)
        stop.set()
        await asyncio.gather(*tasks)
        missing = 0
        for token, counts in acked.items():
            lines = (await http.get("/v1/cart", headers={"X-Cart-Token": token})).json()["lines"]
            seen = {line["sku"]: line["quantity"] for line in lines}
            missing += sum(max(0, n - seen.get(sku, 0)) for sku, n in counts.items())
    sent = sum(len(v) for v in phases.values())
    return {
        "requests": sent,
        "failed": len(failures),
        "error_rate": round(len(failures) / max(sent, 1), 5),
        "failures": Counter(failures).most_common(5),
        "acknowledged_adds_missing": missing,
        "phases_ms": {
            name: {"n": len(v), "p50": round(_pct(v, 0.5), 1), "p95": round(_pct(v, 0.95), 1)}
            for name, v in phases.items()
        },
        "commands": commands,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", action="append", required=True, help="e.g. cart=8 or api=2")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--carts", type=int, default=120)
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s, all clients")
    parser.add_argument("--warm", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=5.0)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
