"""Events latency: order confirmed -> mail in the SMTP sink, and consumer lag at a fixed rate.

Two phases against a running system (``make run``), both read back from
PostgreSQL and the embedded SMTP server's Maildir (``var/mail/new``):

1. ``email``: ``--shoppers`` registered shoppers loop (add one unit to the
   cart, ``POST /v1/checkout`` with ``pm_card_visa``, think 0.5-2 s as the
   Locust shopper does) for ``--seconds``, while ``--browsers`` anonymous
   shoppers read catalog pages at the same pace. For every confirmed order the
   ``order.confirmed`` event is found in the outbox and its mail in the Maildir
   (by Message-ID, which is derived from the event id), and the stages are
   timed from the event's own time (the saga's clock, in its UUIDv7 id):
   write-behind flush (outbox ``created_at``), relay publish (``sent_at``),
   notifications consumer (``processed_events.processed_at``, the start of its
   transaction), the send (``mail_outbox.sent_at``, the start of the sending
   transaction, before the SMTP conversation) and the file in the Maildir
   (its mtime). PostgreSQL's ``now()`` is the start of a transaction, so
   outbox ``created_at -> sent_at`` also holds the writer's commit. The
   relay's own publish lag (``created_at -> sent_at``) is the baseline of the
   same run: it separates the relay from the consumer and SMTP.
2. ``lag``: ``--rate`` events a second for ``--lag-seconds`` go into the
   outbox (the path every real event takes), as ``auth.logged_in`` events of
   made-up users, which the audit consumer appends to its chain and the
   notifications consumer reads and skips; lag is outbox ``created_at`` ->
   ``processed_events.processed_at`` per consumer. The achieved insert rate is
   printed next to the target. Those events stay in the audit log (actors
   ``bench-events-<run>-<n>``): run it on a development system only.
3. ``burst``: ``--burst`` such events go into the outbox in one transaction, so
   the relay publishes them at once (as after a pause), each with its own key;
   the time until each consumer has processed all of them, against the relay's
   publish of the last one, shows a delivery stall (docs/PERFORMANCE.md,
   "Events"). 0 skips it.

All clocks are the one machine's (PostgreSQL ``now()``, the actors', the
file system's). Needs the per-IP limits raised (see docs/PERFORMANCE.md):

    AGORA_API_REQUESTS_PER_IP=100000000 AGORA_AUTH_REQUESTS_PER_IP=100000 \\
        AGORA_TRACING=off make run
    .venv/bin/python -m loadtests.bench_events [--seconds 30] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import aiohttp

from cluster.db import connect
from cluster.infra import mail_dir
from cluster.services import service_urls
from cluster.settings import get_settings
from loadtests.bench_checkout import ADDRESS, BASE, shopper
from loadtests.stock import bench_products
from streams.consumers.notifications import message_id
from streams.events import AUTH_LOGGED_IN, encode, make_event, topic_for

ORDER_MAIL_KIND = "order_confirmed"
LAG_CONSUMERS = ("audit", "notifications")


# --- pure helpers (unit-tested) -------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def row(label: str, values_ms: Sequence[float]) -> str:
    """A markdown table row: label, n, p50, p95, p99, max (milliseconds)."""
    if not values_ms:
        return f"| {label} | 0 | - | - | - | - |"
    cuts = [percentile(values_ms, q) for q in (50, 95, 99)]
    return (
        f"| {label} | {len(values_ms)} | {cuts[0]:.0f} | {cuts[1]:.0f} | {cuts[2]:.0f}"
        f" | {max(values_ms):.0f} |"
    )


def uuid7_ms(event_id: uuid.UUID | str) -> int | None:
    """The Unix milliseconds a UUIDv7 was made at (None for any other version)."""
    value = event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id))
    return value.int >> 80 if value.version == 7 else None


def mail_message_id(event_id: str, kind: str = ORDER_MAIL_KIND) -> str:
    """The Message-ID the notifications consumer gives the ``kind`` mail of ``event_id``."""
    return message_id(f"{event_id}:{kind}")


def header_message_id(data: bytes) -> str | None:
    """The Message-ID header of a stored mail (only the header block is parsed)."""
    value = BytesHeaderParser().parsebytes(data).get("Message-ID")
    return str(value).strip() if value else None


def maildir_index(directory: Path, since: float = 0.0) -> dict[str, float]:
    """Message-ID -> file mtime (Unix seconds) for mail files in ``directory`` newer than ``since``.

    Only the first 8 KiB of each file is read: the headers come first.
    """
    found: dict[str, float] = {}
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        try:
            stat = path.stat()
            if stat.st_mtime < since or not path.is_file():
                continue
            with path.open("rb") as handle:
                head = handle.read(8192)
        except OSError:
            continue  # moved to cur/ by a mail reader meanwhile
        mid = header_message_id(head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0])
        if mid:
            found[mid] = stat.st_mtime
    return found


def due(elapsed_s: float, rate: float) -> int:
    """How many events a fixed ``rate`` a second should have sent ``elapsed_s`` in."""
    return int(max(elapsed_s, 0.0) * rate)


def deltas_ms(pairs: Iterable[tuple[float | None, float | None]]) -> list[float]:
    """``(end - start) * 1000`` for each pair whose two ends are known (seconds in)."""
    return [(end - start) * 1000 for start, end in pairs if start is not None and end is not None]


def windows(
    points: Iterable[tuple[float, float]], start: float, width_s: float = 5.0
) -> list[float]:
    """The largest value of each ``width_s`` window of ``(time, value)`` points after ``start``."""
    worst: dict[int, float] = {}
    for when, value in points:
        slot = max(int((when - start) // width_s), 0)
        worst[slot] = max(worst.get(slot, value), value)
    return [worst.get(i, math.nan) for i in range(max(worst, default=-1) + 1)]


def ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


# --- phase 1: order confirmed -> mail ---------------------------------------------------


async def checkout_loop(
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    skus: list[str],
    deadline: float,
    orders: list[str],
    errors: dict[str, int],
) -> None:
    i = random.randrange(len(skus))
    while time.monotonic() < deadline:
        i += 1
        async with session.post(
            f"{BASE}/v1/cart/items", headers=headers, json={"sku": skus[i % len(skus)]}
        ) as r:
            await r.read()
        async with session.post(
            f"{BASE}/v1/checkout",
            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            json={
                "shipping_address": ADDRESS,
                "shipping_method": "standard",
                "payment": {"method": "card", "token": "pm_card_visa"},
            },
        ) as r:
            body = await r.json(content_type=None)
            if r.status == 201 and isinstance(body, dict) and body.get("id"):
                orders.append(str(body["id"]))
            else:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
        await asyncio.sleep(random.uniform(0.5, 2.0))


async def browse_loop(
    session: aiohttp.ClientSession, skus: list[str], deadline: float, errors: dict[str, int]
) -> None:
    while time.monotonic() < deadline:
        for url in (f"{BASE}/v1/products?limit=50", f"{BASE}/v1/products/{random.choice(skus)}"):
            async with session.get(url) as r:
                await r.read()
                if r.status >= 400:
                    errors[f"browse {r.status}"] = errors.get(f"browse {r.status}", 0) + 1
        await asyncio.sleep(random.uniform(0.5, 2.0))


STAGES = (
    "confirmed -> mail file (end to end)",
    "relay publish (outbox created -> sent)",
    "  saga event -> outbox row (write-behind)",
    "  sent -> notifications processed",
    "  processed -> mail send started (render, commit, wake)",
    "  send started -> file in Maildir (SMTP)",
)


_ORDER_TIMELINE = """
SELECT o.key AS order_id, o.event_id, o.created_at, o.sent_at,
       p.processed_at, m.created_at AS queued_at, m.sent_at AS mailed_at
FROM outbox o
LEFT JOIN processed_events p ON p.consumer = 'notifications' AND p.event_id = o.event_id
LEFT JOIN mail_outbox m ON m.dedupe_key = o.event_id::text || ':order_confirmed'
WHERE o.type = 'order.confirmed' AND o.key = ANY($1::text[])
"""


async def email_phase(
    shoppers: int, browsers: int, seconds: float, drain_s: float
) -> dict[str, Any]:
    settings = get_settings()
    maildir = mail_dir(settings) / "new"
    database = service_urls().database
    skus = await bench_products("BEV", 64)
    orders: list[str] = []
    errors: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        logins = [await shopper(session) for _ in range(shoppers)]
        started = time.time()
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *[checkout_loop(session, h, skus, deadline, orders, errors) for h in logins],
            *[browse_loop(session, skus, deadline, errors) for _ in range(browsers)],
        )
    conn = await connect(database)
    try:
        # Wait for the last mails (or drain_s), polling the database, then read the Maildir.
        give_up = time.monotonic() + drain_s
        while True:
            rows = await conn.fetch(_ORDER_TIMELINE, orders)
            mailed = sum(1 for r in rows if r["mailed_at"] is not None)
            if (len(rows) >= len(orders) and mailed >= len(rows)) or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # the file lands after the SMTP "250"
    finally:
        await conn.close()
    files = maildir_index(maildir, since=started - 5)
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    missing = 0
    for r in rows:
        event_s = (uuid7_ms(r["event_id"]) or 0) / 1000 or ts(r["created_at"])
        file_s = files.get(mail_message_id(str(r["event_id"])))
        if file_s is None:
            missing += 1
        points = [
            event_s,
            ts(r["created_at"]),
            ts(r["sent_at"]),
            ts(r["processed_at"]),
            ts(r["mailed_at"]),
            file_s,
        ]
        stages["confirmed -> mail file (end to end)"] += deltas_ms([(event_s, file_s)])
        stages["relay publish (outbox created -> sent)"] += deltas_ms([(points[1], points[2])])
        stages["  saga event -> outbox row (write-behind)"] += deltas_ms([(points[0], points[1])])
        stages["  sent -> notifications processed"] += deltas_ms([(points[2], points[3])])
        stages["  processed -> mail send started (render, commit, wake)"] += deltas_ms(
            [(points[3], points[4])]
        )
        stages["  send started -> file in Maildir (SMTP)"] += deltas_ms([(points[4], points[5])])
    return {
        "orders": len(orders),
        "events": len(rows),
        "missing": missing + max(len(orders) - len(rows), 0),
        "errors": errors,
        "rate": len(orders) / seconds,
        "stages": stages,
    }


# --- phase 2: consumer lag at a fixed rate -----------------------------------------------


_INSERT = (
    "INSERT INTO outbox (event_id, topic, key, type, envelope)"
    " VALUES ($1::uuid, $2, $3, $4, $5::text::jsonb)"
)
_LAG = """
SELECT o.event_id, o.created_at, o.sent_at, p.consumer, p.processed_at
FROM outbox o LEFT JOIN processed_events p
  ON p.event_id = o.event_id AND p.consumer = ANY($2::text[])
WHERE o.event_id = ANY($1::uuid[])
"""


def made_up_logins(topic: str, tag: str, start: int, count: int) -> list[tuple[str, ...]]:
    """Outbox rows of ``count`` ``auth.logged_in`` events of made-up users (one key each)."""
    rows: list[tuple[str, ...]] = []
    for n in range(start, start + count):
        user = f"bench-events-{tag}-{n}"
        event = make_event(AUTH_LOGGED_IN, user, {"user_id": user}, int(time.time() * 1000))
        rows.append((event.id, topic, event.key, event.type, encode(event).decode()))
    return rows


async def burst_phase(count: int, drain_s: float) -> dict[str, Any]:
    """``count`` events committed at once; per consumer, when the last one was processed."""
    settings = get_settings()
    topic = topic_for(AUTH_LOGGED_IN.name, settings.events_tenant, settings.events_namespace)
    rows = made_up_logins(topic, f"burst-{uuid.uuid4().hex[:8]}", 0, count)
    ids = [r[0] for r in rows]
    conn = await connect(service_urls().database)
    try:
        async with conn.transaction():
            await conn.executemany(_INSERT, rows)
        give_up = time.monotonic() + drain_s
        while True:
            found = await conn.fetch(_LAG, ids, list(LAG_CONSUMERS))
            done = sum(1 for r in found if r["processed_at"] is not None)
            if done >= count * len(LAG_CONSUMERS) or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    created = min(r["created_at"].timestamp() for r in found)
    sent = [r["sent_at"].timestamp() for r in found if r["sent_at"] is not None]
    per: dict[str, list[float]] = {c: [] for c in LAG_CONSUMERS}
    for r in found:
        if r["consumer"] is not None and r["processed_at"] is not None:
            per[r["consumer"]].append((r["processed_at"].timestamp() - created) * 1000)
    return {
        "events": count,
        "published_ms": (max(sent, default=math.nan) - created) * 1000,
        "consumers": per,
    }


async def lag_phase(rate: float, seconds: float, drain_s: float) -> dict[str, Any]:
    settings = get_settings()
    topic = topic_for(AUTH_LOGGED_IN.name, settings.events_tenant, settings.events_namespace)
    tag = uuid.uuid4().hex[:8]
    conn = await connect(service_urls().database)
    ids: list[str] = []
    try:
        start = time.monotonic()
        tick = 0.02  # 50 small inserts a second: the events arrive spread, not in bursts
        while (elapsed := time.monotonic() - start) < seconds:
            batch = made_up_logins(topic, tag, len(ids), due(elapsed, rate) - len(ids))
            if batch:
                await conn.executemany(_INSERT, batch)
                ids += [b[0] for b in batch]
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - start - elapsed)))
        sent_for = time.monotonic() - start
        give_up = time.monotonic() + drain_s
        while True:
            rows = await conn.fetch(_LAG, ids, list(LAG_CONSUMERS))
            done = sum(1 for r in rows if r["processed_at"] is not None)
            if done >= len(ids) * len(LAG_CONSUMERS) or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    relay: dict[str, tuple[float | None, float | None]] = {}
    per: dict[str, list[float]] = {c: [] for c in LAG_CONSUMERS}
    timeline: dict[str, list[tuple[float, float]]] = {c: [] for c in LAG_CONSUMERS}
    first = min((r["created_at"].timestamp() for r in rows), default=0.0)
    for r in rows:
        relay[str(r["event_id"])] = (ts(r["created_at"]), ts(r["sent_at"]))
        if r["consumer"] is not None and r["processed_at"] is not None:
            created, processed = r["created_at"].timestamp(), r["processed_at"].timestamp()
            per[r["consumer"]].append((processed - created) * 1000)
            timeline[r["consumer"]].append((created, (processed - created) * 1000))
    return {
        "events": len(ids),
        "achieved": len(ids) / sent_for,
        "relay": deltas_ms(relay.values()),
        "consumers": per,
        "windows": {c: windows(points, first) for c, points in timeline.items()},
    }


async def main(args: argparse.Namespace) -> None:
    print("| stage | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    if not args.skip_email:
        email = await email_phase(args.shoppers, args.browsers, args.seconds, args.drain)
        for label in STAGES:
            print(row(label, email["stages"][label]))
        print(
            f"\nemail: {email['orders']} confirmed orders ({email['rate']:.1f}/s,"
            f" {args.shoppers} checkout + {args.browsers} browsing shoppers),"
            f" {email['events']} order.confirmed events, {email['missing']} mails missing,"
            f" errors {email['errors'] or 0}\n"
        )
    if not args.skip_lag:
        lag = await lag_phase(args.rate, args.lag_seconds, args.drain)
        print("| stage | n | p50 ms | p95 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|")
        print(row("relay publish (outbox created -> sent)", lag["relay"]))
        for consumer, values in lag["consumers"].items():
            print(row(f"outbox created -> {consumer} processed", values))
        for consumer, worst in lag["windows"].items():
            print(f"{consumer}: max lag ms by 5 s of the run: {[round(w) for w in worst]}")
        print(
            f"\nlag: {lag['events']} auth.logged_in events at {lag['achieved']:.1f}/s"
            f" (target {args.rate:.0f}/s) over {args.lag_seconds:.0f} s"
        )
    if args.burst > 0:
        burst = await burst_phase(args.burst, args.drain)
        print("\n| burst: outbox commit -> processed | n | p50 ms | p95 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for consumer, values in burst["consumers"].items():
            print(row(f"{consumer}", values))
        print(
            f"\nburst: {burst['events']} auth.logged_in events in one transaction, the relay"
            f" published the last {burst['published_ms']:.0f} ms after the commit"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="checkout load duration")
    parser.add_argument("--shoppers", type=int, default=16)
    parser.add_argument("--browsers", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="events a second (lag phase)")
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    parser.add_argument("--drain", type=float, default=30.0, help="wait this long for stragglers")
    parser.add_argument("--burst", type=int, default=1000, help="events at once (0: skip)")
    parser.add_argument("--skip-email", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    asyncio.run(main(parser.parse_args()))
