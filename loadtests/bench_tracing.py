"""Tracing overhead: the same HTTP benchmark with AGORA_TRACING=off and =file, alternated.

Usage (restarts the system for every leg; hold the system lock)::

    python -m loadtests.bench_tracing [--legs off,file,off,file] [--duration 8] [--concurrency 16]

A leg ``file:0.01`` also sets ``AGORA_TRACE_SAMPLE_RATIO=0.01``.

Each leg is ``make stop``, ``AGORA_TRACING=<mode> make run``, then ``loadtests.bench``
(``/healthz``, a product page and add-to-cart, closed loop at one concurrency). The
legs alternate so drift of the shared machine hits both modes; the report is the
median throughput and p95 per mode and scenario, and each mode's throughput ratio to off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("healthz", "product_page", "add_to_cart")


def leg(
    mode: str, duration: float, concurrency: int, out: Path, restart: bool = True
) -> list[dict[str, Any]]:
    tracing, _, ratio = mode.partition(":")
    env = {**os.environ, "AGORA_TRACING": tracing}
    if ratio:
        env["AGORA_TRACE_SAMPLE_RATIO"] = ratio
    if restart:
        subprocess.run(["make", "stop"], cwd=ROOT, env=env, check=False, capture_output=True)
        subprocess.run(["make", "run"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--duration",
            str(duration),
            "--concurrency",
            str(concurrency),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    results: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    return results


def summary(runs: dict[str, list[list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per mode and scenario: median throughput and p95 over the legs; ratios file/off."""
    table: dict[str, Any] = {}
    for mode, legs in runs.items():
        for scenario in SCENARIOS:
            rows = [r for results in legs for r in results if r["scenario"] == scenario]
            table.setdefault(scenario, {})[mode] = {
                "rps": round(statistics.median(r["rps"] for r in rows), 1),
                "p95_ms": round(statistics.median(r["p95_ms"] for r in rows), 1),
                "legs": len(rows),
            }
    for row in table.values():
        for mode in [m for m in row if m != "off"]:
            if "off" in row:
                row[f"rps_ratio_{mode}_off"] = round(row[mode]["rps"] / row["off"]["rps"], 3)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", default="off,file,off,file")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench-tracing.json"))
    parser.add_argument(
        "--running",
        action="store_true",
        help="the first leg uses the system already running (started with that mode)",
    )
    args = parser.parse_args(argv)
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for i, mode in enumerate(args.legs.split(",")):
        part = Path(args.out).with_suffix(f".{i}.{mode.replace(':', '-')}.json")
        restart = not (args.running and i == 0)
        results = leg(mode, args.duration, args.concurrency, part, restart)
        runs.setdefault(mode, []).append(results)
        print(f"leg {i} ({mode}) done", file=sys.stderr)
    table = summary(runs)
    Path(args.out).write_text(json.dumps(table, indent=2))
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
