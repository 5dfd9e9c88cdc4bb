"""The shopper mix on one Ray node, then on two, in the same run (issue 12, scaling out).

Usage, against a running one-node Agora with the per-IP limits raised::

    AGORA_API_REQUESTS_PER_IP=100000000 AGORA_AUTH_REQUESTS_PER_IP=100000 make run
    .venv/bin/python -m loadtests.two_nodes [--seconds 15] [--step 4,8,16]

1. ``loadtests.mix`` closed-loop steps on the running system (one node), while the CPU
   seconds of every shard actor, API replica, HAProxy and PostgreSQL are counted;
2. a second Ray node joins on this machine (``infra.start_ray_worker``); every
   odd-numbered shard is moved onto it (final flush, stopped for good, created again with
   soft affinity, ``bootstrap.place_shard``; the even ones are recreated on the head the same
   way) and the API replicas are restarted so they hold the new shards' handles;
3. the same mix again, counted the same way; the second node is stopped at the end (its
   shards restart on the head) and the per-request CPU of each part is printed, from which
   docs/PERFORMANCE.md models a two-machine cluster.

Both nodes share this machine's cores, so step 3 measures the cost of the spread (one more
raylet, cross-node calls), not the gain of a second machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import psutil

from actors.clients import ShardOps
from cluster import cli, infra
from cluster.bootstrap import place_shard, shard_directory
from cluster.settings import get_settings

KINDS = ("cart", "inventory", "order", "session")
PACED_S = 5


def _parts(shard_pids: dict[int, str]) -> dict[int, str]:
    """pid -> the part it belongs to, for every process whose CPU is counted."""
    parts = dict(shard_pids)
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        line = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] in parts:
            continue
        if "ServeReplica:agora:Api" in line:
            parts[proc.info["pid"]] = "api replicas"
        elif "ServeReplica" in line:
            parts[proc.info["pid"]] = "model replicas"
        elif proc.info["name"] == "haproxy" or "haproxy_edge" in line:
            parts[proc.info["pid"]] = "haproxy"
        elif proc.info["name"] == "postgres":
            parts[proc.info["pid"]] = "postgresql"
        elif proc.info["name"] in ("raylet", "gcs_server"):
            parts[proc.info["pid"]] = "ray (raylets, gcs)"
    return parts


def _cpu(parts: dict[int, str]) -> Counter[str]:
    seconds: Counter[str] = Counter()
    for pid, part in parts.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[part] += times.user + times.system
    return seconds


async def _shard_pids(directory: Any) -> dict[int, str]:
    ops = ShardOps(directory)
    found = {}
    for kind in KINDS:
        for stats in await ops.stats_of(kind):
            found[stats["pid"]] = f"{kind} shards"
    return found


def run_mix(args: argparse.Namespace, label: str, directory: Any) -> tuple[str, Counter[str]]:
    parts = _parts(asyncio.run(_shard_pids(directory)))
    before = _cpu(parts)
    command = [sys.executable, "-m", "loadtests.mix", "--users", "8", "--seconds", str(PACED_S)]
    command += ["--step", args.step, "--step-seconds", str(args.seconds)]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    used = _cpu(parts)
    used.subtract(before)
    print(f"## {label}\n{out}")
    return out, used


def _closed_loop(out: str) -> list[tuple[int, float, float]]:
    rows = re.findall(r"\| closed loop, (\d+) clients \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|", out)
    return [(int(n), float(rate), float(p95)) for n, rate, p95 in rows]


def _requests(out: str, args: argparse.Namespace) -> float:
    """Requests the API answered during a mix run: paced, closed loop and /healthz."""
    paced = re.search(r"\| paced, \d+ users \| ([\d.]+) \|", out)
    healthz = re.search(r"/healthz closed loop at \d+: ([\d.]+) req/s", out)
    total = sum(rate for _n, rate, _p95 in _closed_loop(out)) * args.seconds
    total += float(paced.group(1)) * PACED_S if paced else 0.0
    return total + (float(healthz.group(1)) * args.seconds if healthz else 0.0)


def move_shards(settings: Any, head: str, node2: str) -> Any:
    """Every shard stopped for good after a final flush, then created again: odd ones on
    ``node2``, even ones on ``head``; returns a directory that reaches them."""
    import ray

    plain = shard_directory(settings)
    for kind in KINDS:
        for name in plain.shard_names(kind):
            handle = plain.handle(name)
            ray.get(handle.drain.remote(), timeout=60)
            ray.kill(handle, no_restart=True)
            plain.forget(name)
            deadline = time.monotonic() + 30
            while True:
                try:
                    ray.get_actor(name, namespace=settings.ray_namespace)
                except ValueError:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not stop")
                time.sleep(0.1)
            place_shard(settings, name, node2 if int(name.rsplit(":", 1)[1]) % 2 else head)
    return plain


def restart_api_replicas() -> None:
    """Serve starts new replicas in place of killed ones; new replicas look the shards up."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and "#Api#" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--step", default="4,8,16")
    args = parser.parse_args(argv)
    settings = get_settings()
    cli.connect_ray(settings)
    import ray

    head = ray.get_runtime_context().get_node_id()
    one_out, one_cpu = run_mix(args, "one node", shard_directory(settings))
    env = {"AGORA_VAR_DIR": str(settings.var_dir), **cli.tracing_env(settings)}
    worker = infra.start_ray_worker(settings, env, name="node2", num_cpus=settings.ray_num_cpus)
    try:
        directory = move_shards(settings, head, worker.node_id)
        restart_api_replicas()
        cli._wait_ready(settings, timeout=120)
        time.sleep(3)
        two_out, two_cpu = run_mix(args, "two nodes (same machine)", directory)
    finally:
        infra.stop_ray_worker(worker)
    print("| clients | one node req/s (p95 ms) | two nodes req/s (p95 ms) | ratio |")
    print("|---:|---:|---:|---:|")
    rows = zip(_closed_loop(one_out), _closed_loop(two_out), strict=False)
    for (n, r1, p1), (_n, r2, p2) in rows:
        print(f"| {n} | {r1:.1f} ({p1:.1f}) | {r2:.1f} ({p2:.1f}) | {r2 / r1:.2f}x |")
    one_n, two_n = _requests(one_out, args), _requests(two_out, args)
    print(f"\nCPU ms per request answered ({one_n:.0f} and {two_n:.0f} requests), per part:")
    for part in sorted(set(one_cpu) | set(two_cpu)):
        one_ms, two_ms = 1000 * one_cpu[part] / one_n, 1000 * two_cpu[part] / two_n
        print(f"  {part}: one node {one_ms:.2f} ms, two nodes {two_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
