"""The Parquet warehouse: day partitions, dedupe, late events, compaction, byte-identical
replays; the warehouse consumer's journal; the fire-and-forget view publisher."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cluster import analytics
from cluster.settings import Settings
from serve import views
from serve.carttoken import CartTokens
from serve.problems import Problem
from serve.routers.analytics import load, report_range
from streams.consumers.warehouse import WarehouseConsumer, enrichment, land_journal
from streams.events import (
    CART_ITEM_ADDED,
    INVENTORY_CHANGED,
    ORDER_CONFIRMED,
    PRODUCT_VIEWED,
    Envelope,
    make_event,
)
from streams.publisher import BackgroundPublisher
from streams.warehouse import (
    DATA_FILE,
    EVENTS,
    ORDER_LINES,
    PAID_ORDERS,
    ROLLUP_SCHEMAS,
    SOURCES_FILE,
    Warehouse,
    is_compacted,
    rows_for,
)
from streams.warehouse_store import MANIFESTS


def _ms(day: str, hour: int = 12) -> int:
    return int(datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC).timestamp() * 1000)


def _view(day: str, sku: str = "A", hour: int = 12) -> Envelope:
    return make_event(PRODUCT_VIEWED, "v1", {"sku": sku, "visitor": "v1"}, _ms(day, hour))


ORDER = {
    "lines": [{"sku": "A", "quantity": 2, "unit_price": 500, "line_total": 900}],
    "totals": {"subtotal": 1000, "discount_total": 100, "currency": "BRL"},
}


def _confirmed(day: str, order_id: str = "o1") -> Envelope:
    payload = {"order_id": order_id, "user_id": "u1", "total": 900, "currency": "BRL"}
    return make_event(ORDER_CONFIRMED, order_id, payload, _ms(day))


def _land(warehouse: Warehouse, events: list[Envelope]) -> None:
    rows: dict[str, list[dict[str, Any]]] = {EVENTS: [], ORDER_LINES: [], PAID_ORDERS: []}
    for e in events:
        order = ORDER if e.type == ORDER_CONFIRMED.name else None
        for table, table_rows in rows_for(e, order, {"A": "books"}).items():
            rows[table] += table_rows
    warehouse.land(rows)


# Every day's rollups and the record of what they were built from (part of the
# byte-identical promise too).
ROLLUP_FILES = [
    f"rollups/{span}/{name}"
    for span in ("day=2026-11-01", "day=2026-11-02", "day=2026-11-03", "month=2026-11")
    for name in sorted([*(f"{n}.parquet" for n in ROLLUP_SCHEMAS), SOURCES_FILE])
] + [
    f"rollups/year=2026/{name}"
    for name in ("funnel_events.parquet", "funnel_visitors.parquet", SOURCES_FILE)
]


def _digests(warehouse: Warehouse) -> dict[str, str]:
    """Every file of the warehouse (not the local lock) by key: its bytes' digest."""
    out = {}
    for key in warehouse.store.keys():
        if key.rpartition("/")[2].startswith("."):
            continue
        data = warehouse.store.read_bytes(key)
        assert data is not None
        out[key] = hashlib.sha256(data).hexdigest()
    return out


def _named_as_local(keys: list[str]) -> list[str]:
    """Table file keys as a local warehouse names them (S3: ``data-<hash>``, manifests)."""
    return sorted(
        re.sub(r"/data-[0-9a-f]{16}\.parquet$", f"/{DATA_FILE}", k)
        for k in keys
        if not k.startswith(f"{MANIFESTS}/")
    )


@pytest.fixture
def make_warehouse(tmp_path: Path) -> Callable[[str], Warehouse]:
    """A new, empty warehouse per name (here: a directory; the S3 module adds a bucket)."""
    return lambda name="wh": Warehouse(tmp_path / name)


def test_rows_of_a_paid_order_carry_its_lines_and_totals():
    rows = rows_for(_confirmed("2026-11-02"), ORDER, {"A": "books"})
    (event,) = rows[EVENTS]
    assert (event["gross"], event["discounts"], event["amount"]) == (1000, 100, 900)
    assert event["visitor"] == "user:u1"
    (paid,) = rows[PAID_ORDERS]
    assert (paid["gross"], paid["discounts"], paid["net"], paid["currency"]) == (
        1000,
        100,
        900,
        "BRL",
    )
    (line,) = rows[ORDER_LINES]
    assert (line["category"], line["gross"], line["net"], line["quantity"]) == (
        "books",
        1000,
        900,
        2,
    )


def test_rows_of_cart_adds_and_stock_changes():
    added = make_event(
        CART_ITEM_ADDED, "c1", {"cart_id": "c1", "sku": "A", "quantity": 2, "unit_price": 7}, 1
    )
    (row,) = rows_for(added)[EVENTS]
    assert (row["visitor"], row["sku"], row["quantity"], row["amount"]) == ("c1", "A", 2, 7)
    stock = make_event(INVENTORY_CHANGED, "A", {"available": 0, "on_hand": 0}, 1)
    (row,) = rows_for(stock)[EVENTS]
    assert (row["sku"], row["available"]) == ("A", 0)


@pytest.mark.parametrize(
    "event",
    [
        Envelope(
            id="x", type="order.confirmed", version=9, occurred_at="2026-11-01T00:00:00Z", key="k"
        ),
        Envelope(
            id="x", type="order.confirmed", version=1, occurred_at="2026-11-01T00:00:00Z", key="k"
        ),
        Envelope(
            id="x", type="product.viewed", version=1, occurred_at="2026-11-01T00:00:00Z", key="k"
        ),
        Envelope(
            id="x",
            type="cart.item_added",
            version=1,
            occurred_at="2026-11-01T00:00:00Z",
            key="k",
            payload={"quantity": "two"},
        ),
        Envelope(id="x", type="cart.cleared", version=1, occurred_at="yesterday", key="k"),
    ],
)
def test_unreadable_events_raise(event: Envelope):
    with pytest.raises(ValueError):
        rows_for(event)


def test_days_are_partitions_and_a_late_event_lands_in_its_own_day(make_warehouse):
    warehouse = make_warehouse()
    _land(warehouse, [_view("2026-11-02"), _view("2026-11-03"), _confirmed("2026-11-03")])
    assert warehouse.days(EVENTS) == [date(2026, 11, 2), date(2026, 11, 3)]
    assert warehouse.days(ORDER_LINES) == [date(2026, 11, 3)]
    assert warehouse.compact(min_files=1) == 4
    # A late view of November 1st arrives after the 2nd and 3rd were compacted.
    _land(warehouse, [_view("2026-11-01", sku="LATE")])
    assert warehouse.days(EVENTS)[0] == date(2026, 11, 1)
    late = warehouse.scan(EVENTS, date(2026, 11, 1), date(2026, 11, 1))
    assert late["sku"].to_list() == ["LATE"]
    assert warehouse.scan(EVENTS, date(2026, 11, 2)).height == 3
    assert is_compacted(warehouse.files(EVENTS, date(2026, 11, 3)))


def test_duplicates_are_dropped_on_read_and_by_compaction(make_warehouse):
    warehouse = make_warehouse()
    view, paid = _view("2026-11-02"), _confirmed("2026-11-02")
    _land(warehouse, [view, paid])
    _land(warehouse, [view, paid])  # redelivered
    _land(warehouse, [view])
    day = date(2026, 11, 2)
    assert len(warehouse.files(EVENTS, day)) == 3
    assert warehouse.scan(EVENTS).height == 2
    assert warehouse.scan(ORDER_LINES).height == 1
    assert warehouse.compact() == 3  # events, order_lines and paid_orders of that day
    assert is_compacted(warehouse.files(EVENTS, day))
    assert warehouse.read_day(EVENTS, day).height == 2
    assert warehouse.compact() == 0  # nothing left to compact


def test_compaction_keeps_what_landed_since_and_types_filter(make_warehouse):
    warehouse = make_warehouse()
    _land(warehouse, [_view("2026-11-02", hour=1), _view("2026-11-02", hour=2)])
    warehouse.compact(min_files=1)
    _land(warehouse, [_confirmed("2026-11-02")])
    assert len(warehouse.files(EVENTS, date(2026, 11, 2))) == 2
    only_paid = warehouse.scan(EVENTS, types=[ORDER_CONFIRMED.name])
    assert only_paid["type"].to_list() == [ORDER_CONFIRMED.name]
    warehouse.compact()
    rows = warehouse.read_day(EVENTS, date(2026, 11, 2))
    # Sorted by time then id: the two views (01:00, 02:00) before the order (12:00).
    assert rows["type"].to_list() == ["product.viewed", "product.viewed", "order.confirmed"]


def test_two_replays_in_any_order_and_batching_give_identical_bytes(make_warehouse):
    events = [_view(f"2026-11-0{1 + i % 3}", sku=f"S{i % 4}", hour=i % 24) for i in range(60)]
    events += [_confirmed("2026-11-02", f"o{i}") for i in range(5)]

    def rebuild(name: str, seed: int) -> dict[str, str]:
        order = events + events[:9]  # with redeliveries
        random.Random(seed).shuffle(order)
        warehouse = make_warehouse(name)
        size = 3 + seed
        for start in range(0, len(order), size):
            _land(warehouse, order[start : start + size])
        warehouse.compact(min_files=1)
        return _digests(warehouse)

    first, second = rebuild("a", 1), rebuild("b", 2)
    assert first == second
    assert _named_as_local(list(first)) == [
        "events/day=2026-11-01/data.parquet",
        "events/day=2026-11-02/data.parquet",
        "events/day=2026-11-03/data.parquet",
        "order_lines/day=2026-11-02/data.parquet",
        "paid_orders/day=2026-11-02/data.parquet",
        *ROLLUP_FILES,
    ]


def test_scan_of_an_empty_warehouse_has_the_schema(make_warehouse):
    empty = make_warehouse("none").scan(ORDER_LINES)
    assert empty.height == 0 and "category" in empty.columns


# --- the consumer -----------------------------------------------------------------------


class _Conn:
    """The two queries ``enrichment`` makes, answered from dicts (no database in unit tests)."""

    def __init__(self, orders: dict[str, Any], categories: dict[str, str]) -> None:
        self.orders, self.categories = orders, categories

    async def fetchval(self, _sql: str, order_id: str) -> str | None:
        order = self.orders.get(order_id)
        return None if order is None else json.dumps(order)

    async def fetch(self, _sql: str, skus: list[str]) -> list[dict[str, str]]:
        return [{"sku": s, "category": self.categories[s]} for s in skus if s in self.categories]

    async def __aenter__(self) -> _Conn:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


class _Pool:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def acquire(self) -> _Conn:
        return self.conn


def test_enrichment_reads_the_order_and_categories():
    conn: Any = _Conn({"o1": {**ORDER, "other": 1}}, {"A": "books"})
    extra = asyncio.run(enrichment(conn, _confirmed("2026-11-02")))
    assert extra == {
        "order": {"lines": ORDER["lines"], "totals": ORDER["totals"]},
        "categories": {"A": "books"},
    }
    assert asyncio.run(enrichment(conn, _confirmed("2026-11-02", "missing"))) == {}
    assert asyncio.run(enrichment(conn, _view("2026-11-02"))) == {}


def test_consumer_journals_then_lands_when_due(make_warehouse, tmp_path: Path):
    warehouse = make_warehouse()
    consumer = WarehouseConsumer(
        "agora",
        "events",
        warehouse.root,
        flush_s=3600,
        compact_every_s=3600,
        journal_dir=tmp_path / "journal",
    )
    assert "persistent://agora/events/views" in consumer.topics
    pool: Any = _Pool(_Conn({"o1": ORDER}, {"A": "books"}))

    async def run() -> None:
        assert await consumer.handle(pool, _view("2026-11-02"))
        assert await consumer.handle(pool, _confirmed("2026-11-02"))
        await consumer.tick(pool)  # not due yet: only the journal holds them
        assert warehouse.scan(EVENTS).height == 0
        assert len(consumer.journal.read_bytes().splitlines()) == 2
        consumer.flush_s = 0
        await consumer.tick(pool)

    asyncio.run(run())
    assert warehouse.scan(EVENTS).height == 2
    assert warehouse.scan(ORDER_LINES)["category"].to_list() == ["books"]
    assert consumer.journal.read_bytes() == b""


def test_a_restarted_consumer_lands_the_journal_it_finds_first(tmp_path: Path):
    dead = WarehouseConsumer("agora", "events", tmp_path, flush_s=3600)
    asyncio.run(dead.handle(None, _view("2026-11-02")))  # type: ignore[arg-type]
    # Killed before its flush; a torn last line (a write cut short) is dropped.
    with open(dead.journal, "ab") as handle:
        handle.write(b'{"event": {"id": "tor')
    revived = WarehouseConsumer("agora", "events", tmp_path, flush_s=3600)
    asyncio.run(revived.tick(None))  # type: ignore[arg-type]
    assert Warehouse(tmp_path).scan(EVENTS).height == 1
    assert revived.journal.read_bytes() == b""


def test_the_consumer_refuses_a_bad_event_before_journaling(tmp_path: Path):
    consumer = WarehouseConsumer("agora", "events", tmp_path)
    bad = Envelope(
        id="x", type="product.viewed", version=1, occurred_at="2026-11-01T00:00:00Z", key="k"
    )
    with pytest.raises(ValueError):
        asyncio.run(consumer.handle(None, bad))  # type: ignore[arg-type]
    assert not consumer.journal.exists()


def test_landing_an_absent_journal_is_nothing(tmp_path: Path):
    consumer = WarehouseConsumer("agora", "events", tmp_path)
    assert consumer.flush() == 0
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(b"")
    assert land_journal(Warehouse(tmp_path), journal) == 0


# --- the API's thin part ------------------------------------------------------------------


def test_report_range_defaults_and_limits():
    start, end = report_range(None, date(2026, 11, 30), 3660)
    assert (start, end) == (date(2026, 11, 1), date(2026, 11, 30))
    with pytest.raises(Problem) as backwards:
        report_range(date(2026, 12, 2), date(2026, 12, 1), 3660)
    assert backwards.value.status == 422
    with pytest.raises(Problem):
        report_range(date(2020, 1, 1), date(2026, 1, 1), 365)


def test_load_reads_only_what_a_report_needs(make_warehouse):
    warehouse = make_warehouse()
    _land(
        warehouse, [_view("2026-10-02"), _confirmed("2026-10-02"), _confirmed("2026-11-02", "o2")]
    )
    sales = load(warehouse, "sales", date(2026, 11, 1), date(2026, 11, 30))
    assert sales.orders["order_id"].to_list() == ["o2"] and sales.lines.height == 1
    assert sales.events.height == 0  # sales read no events
    cohorts = load(warehouse, "cohorts", date(2026, 11, 1), date(2026, 11, 30))
    assert sorted(cohorts.orders["order_id"].to_list()) == ["o1", "o2"]  # all history
    assert cohorts.lines.height == 0
    funnel = load(warehouse, "funnel", date(2026, 10, 1), date(2026, 10, 31))
    assert sorted(funnel.events["type"].to_list()) == ["order.confirmed", "product.viewed"]
    assert "payload" not in funnel.events.columns and funnel.orders.height == 0


# --- fire-and-forget ------------------------------------------------------------------------


class _StuckClient:
    """A Pulsar client whose broker never answers a producer request (until released)."""

    release = threading.Event()
    closed = threading.Event()

    def __init__(self, *_: object, **__: object) -> None:
        pass

    def create_producer(self, *_: object, **__: object) -> Any:
        self.release.wait(10)
        raise RuntimeError("broker unreachable")

    def close(self) -> None:
        self.closed.set()


def test_a_full_publisher_drops_and_counts_without_waiting():
    drops: list[str] = []
    publisher = BackgroundPublisher(
        "pulsar://nowhere", capacity=2, on_drop=drops.append, client_factory=_StuckClient
    )
    started = time.monotonic()
    accepted = [publisher.offer("persistent://t/n/views", _view("2026-11-02")) for _ in range(10)]
    assert time.monotonic() - started < 0.5  # offering never waits on the broker
    assert sum(accepted) in (2, 3)  # the queue, plus the one the thread may hold
    assert drops == ["full"] * (10 - sum(accepted))
    # The broker fails every send: each is dropped as "send_failed", then the thread stops.
    _StuckClient.release.set()
    publisher.close()
    assert _StuckClient.closed.is_set()
    assert drops.count("send_failed") == sum(accepted)


# --- wiring: the CLI and the view hook ------------------------------------------------------


def test_cli_compacts_and_refuses_a_non_empty_rebuild_target(tmp_path: Path, capsys):
    settings = Settings(var_dir=tmp_path)
    _land(Warehouse(settings.warehouse_root), [_view("2026-11-02")])
    _land(Warehouse(settings.warehouse_root), [_view("2026-11-02", sku="B")])
    parser = argparse.ArgumentParser()
    analytics.add_parser(parser.add_subparsers(dest="command"))
    assert analytics.main(settings, parser.parse_args(["analytics", "compact"])) == 0
    assert "compacted 1 day partitions" in capsys.readouterr().out
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something").write_text("x")
    args = parser.parse_args(["analytics", "rebuild", "--out", str(out), "--no-progress"])
    assert analytics.main(settings, args) == 1
    assert "not empty" in capsys.readouterr().out
    consumer = analytics.warehouse_consumer(settings)
    assert consumer.root == tmp_path / "warehouse" and consumer.name == "warehouse"


def test_the_warehouse_url_names_a_directory_or_an_object_store(tmp_path: Path):
    s3 = Settings(var_dir=tmp_path, warehouse_url="s3://bucket/wh?endpoint=http://h:9000")
    assert s3.warehouse_location == "s3://bucket/wh?endpoint=http://h:9000"
    assert s3.warehouse_journal_dir == tmp_path / "warehouse-journal"
    with pytest.raises(ValueError):
        _ = s3.warehouse_root  # no directory (backups skip it)
    local = Settings(warehouse_url="file:///srv/wh")
    assert local.warehouse_root == Path("/srv/wh") and local.warehouse_journal_dir is None
    assert Settings(var_dir=tmp_path).warehouse_location == str(tmp_path / "warehouse")
    for bad in ("s3://", "s3://k:secret@bucket/wh", "s3://b/wh?endpoint=ftp://h", "gs://b/wh"):
        with pytest.raises(ValueError):
            _ = Settings(warehouse_url=bad).warehouse_location
    with pytest.raises(ValueError):  # an object store needs a local journal
        WarehouseConsumer("agora", "events", "s3://bucket/wh")
    assert analytics.rebuild_target("s3://b/wh?endpoint=http://h:9000", None) == (
        "s3://b/wh.rebuild?endpoint=http://h:9000"
    )
    assert analytics.rebuild_target("/srv/wh", None) == "/srv/wh.rebuild"


class _Request:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_the_visitor_is_named_without_io():
    tokens = CartTokens(b"k" * 32)
    rt: Any = SimpleNamespace(verifier=None, tokens=tokens)
    token = tokens.issue()
    request: Any = _Request({"x-cart-token": token})
    assert views.visitor(rt, request) == (tokens.cart_id(token), None)
    forged: Any = _Request({"x-cart-token": "A" * 43 + "." + "B" * 22})
    assert views.visitor(rt, forged) == (None, None)
    bearer: Any = _Request({"authorization": "Bearer not-a-token"})
    rt.verifier = SimpleNamespace(verify=lambda token, now: None)
    assert views.visitor(rt, bearer) == (None, None)


def test_views_off_publish_nothing():
    rt: Any = SimpleNamespace(
        settings=Settings(views_enabled=False), urls=None, verifier=None, tokens=None
    )
    views.record_view(rt, _Request({}), "A")  # type: ignore[arg-type]
    assert views.publisher(rt) is None
