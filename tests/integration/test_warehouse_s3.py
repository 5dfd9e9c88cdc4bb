"""The analytics warehouse on an S3-compatible object store (moto's standalone server,
started here on a free port) and in a local directory: the same warehouse and rollup
cases against both; a day half-written is never visible; compaction swaps a day's
manifest under concurrent landers and readers; reports from S3 equal the local ones,
file for file.

Needs no Agora system: only the moto_server process this module starts and stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from cluster import analytics
from cluster.settings import Settings
from loadtests.bench_analytics import generate
from streams import reports, warehouse_store
from streams.warehouse import (
    EVENTS,
    ORDER_LINES,
    PAID_ORDERS,
    ROLLUPS,
    TABLES,
    Warehouse,
    frame,
    is_compacted,
)
from streams.warehouse_store import MANIFESTS, S3Store, day_key, open_store
from tests.s3 import moto_server
from tests.unit import test_analytics_rollups as rollup_cases
from tests.unit import test_analytics_warehouse as warehouse_cases

# The same cases as the local unit tests, here against both backends (``make_warehouse``).
# Not here: the raw-rows-vs-rollups cases (late and duplicate events, a cut-short day) make
# thousands of requests to moto (minutes each); the file-for-file report test below covers
# the rollups on S3, the unit tier covers those cases on directories.
from tests.unit.test_analytics_rollups import (  # noqa: F401 - collected by pytest
    test_a_stockout_that_spans_days_is_one_stockout_with_all_its_hours,
    test_rollups_written_by_an_older_version_are_not_trusted,
    test_sales_net_out_refunds_on_their_own_day_and_skip_failed_ones,
)
from tests.unit.test_analytics_warehouse import (  # noqa: F401 - collected by pytest
    test_compaction_keeps_what_landed_since_and_types_filter,
    test_consumer_journals_then_lands_when_due,
    test_days_are_partitions_and_a_late_event_lands_in_its_own_day,
    test_duplicates_are_dropped_on_read_and_by_compaction,
    test_load_reads_only_what_a_report_needs,
    test_scan_of_an_empty_warehouse_has_the_schema,
    test_two_replays_in_any_order_and_batching_give_identical_bytes,
)

# Every request to moto costs milliseconds (tens on a loaded box): the rollup cases
# make thousands.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BUCKET = "agora-warehouse-test"
# Recognisable, so a test can check it is never printed.
SECRET = "wh-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "warehouse-test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    try:
        with moto_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as url:
            yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _s3_url(endpoint: str, name: str) -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}/{name}?endpoint={endpoint}"


@pytest.fixture(scope="module")
def generated() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The rollup cases' data, smaller (same 40 days, so the same months and paths)."""
    events, lines, paid = generate(1_000, rollup_cases.DAYS, seed=11)
    return rollup_cases._with_extras(events), lines, paid


@pytest.fixture
def make_warehouse(endpoint) -> Callable[[str], Warehouse]:
    """A new, empty warehouse per name: a fresh prefix in the bucket (the unit tier runs
    the same cases on directories)."""
    return lambda name="wh": Warehouse(_s3_url(endpoint, name))


@pytest.fixture
def s3(endpoint) -> Callable[[str], Warehouse]:
    return lambda name="wh": Warehouse(_s3_url(endpoint, name))


def _fresh_store(warehouse: Warehouse) -> S3Store:
    """Another client on the same prefix (its own manifest cache), as another process."""
    store = warehouse.store
    assert isinstance(store, S3Store)
    return S3Store(store.bucket, store.prefix, store.endpoint, store.region)


def test_a_day_half_written_is_never_visible(s3):
    warehouse = s3()
    day = date(2026, 11, 2)
    warehouse_cases._land(warehouse, [warehouse_cases._view("2026-11-02")])
    warehouse.compact(min_files=1)
    before = warehouse.scan(EVENTS)
    # A land cut short: its objects were PUT, the manifest never named them.
    part = warehouse_cases._confirmed("2026-11-02", "o9")
    rows = io.BytesIO()
    frame(EVENTS, warehouse_cases.rows_for(part)[EVENTS]).write_parquet(rows)
    orphan = f"{day_key(EVENTS, day)}/batch-cut-short.parquet"
    warehouse.store.write(orphan, rows.getvalue())
    # ... and a day that only ever got its objects.
    warehouse.store.write(f"{day_key(EVENTS, date(2026, 11, 9))}/batch-x.parquet", rows.getvalue())
    assert warehouse.days(EVENTS) == [day]
    assert warehouse.scan(EVENTS).equals(before)
    assert "batch-cut-short.parquet" not in warehouse.files(EVENTS, day)
    assert reports.run(warehouse, "sales", day, day)["totals"]["orders"] == 0
    # Compaction neither absorbs it nor, while it may be a land in progress, deletes it.
    warehouse_cases._land(warehouse, [warehouse_cases._view("2026-11-02", sku="B")])
    assert warehouse.compact() == 1
    assert orphan in warehouse.store.keys()
    assert warehouse.scan(EVENTS).height == 2
    # Once older than any land takes, it is swept.
    old = warehouse_store.ORPHAN_AGE
    warehouse_store.ORPHAN_AGE = timedelta(0)
    try:
        warehouse.compact()
    finally:
        warehouse_store.ORPHAN_AGE = old
    assert not [k for k in warehouse.store.keys() if "batch-" in k]


def test_a_land_makes_a_days_tables_visible_together(s3):
    warehouse = s3()
    warehouse_cases._land(warehouse, [warehouse_cases._confirmed("2026-11-02")])
    manifest = warehouse.store.read_text(f"{MANIFESTS}/day=2026-11-02.json")
    assert manifest is not None
    tables = json.loads(manifest)["tables"]
    # One manifest PUT named the event, its line and its paid order at once.
    assert sorted(tables) == sorted(TABLES) and all(len(n) == 1 for n in tables.values())


def test_compaction_swaps_the_manifest_under_concurrent_landers_and_readers(s3):
    warehouse = s3()
    day = date(2026, 11, 2)
    landers = [Warehouse(_fresh_store(warehouse)) for _ in range(3)]
    reader = Warehouse(_fresh_store(warehouse))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def land(i: int) -> None:
        try:
            for n in range(8):
                sku = f"L{i}-{n}"
                warehouse_cases._land(landers[i], [warehouse_cases._view("2026-11-02", sku=sku)])
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(reader.scan(EVENTS, day, day).height)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=land, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    compactions = 0
    while any(t.is_alive() for t in threads[:3]):
        compactions += warehouse.compact()
    for t in threads[:3]:
        t.join()
    stop.set()
    threads[3].join()
    assert not errors, errors
    # Every land survived every compaction (no lost manifest update), no row twice.
    skus = warehouse.scan(EVENTS)["sku"].to_list()
    assert sorted(skus) == sorted(f"L{i}-{n}" for i in range(3) for n in range(8))
    assert compactions > 0 and seen and max(seen) <= 24
    warehouse.compact(min_files=1)
    assert is_compacted(warehouse.files(EVENTS, day))
    # Only the compacted object is left of the day's table files.
    keys = [k for k in warehouse.store.keys() if k.startswith(f"{EVENTS}/")]
    assert keys == [f"{day_key(EVENTS, day)}/{warehouse.files(EVENTS, day)[0]}"]


def test_reports_from_s3_equal_the_local_ones_file_for_file(s3, tmp_path: Path):
    events, lines, paid = generate(1_500, 40, seed=5)
    tables = {EVENTS: events, ORDER_LINES: lines, PAID_ORDERS: paid}
    local, remote = Warehouse(tmp_path / "wh"), s3()
    for warehouse in (local, remote):
        for table, df in tables.items():
            warehouse.land_frame(table, df.head(df.height // 2))
            warehouse.land_frame(table, df)  # half of it twice
        warehouse.compact(min_files=1)
    # Two of the unit tier's ranges (which runs them all on directories): the whole span
    # and one across the month boundary; each S3 read here is a round trip to moto.
    for name in reports.REPORTS:
        for start, end in (rollup_cases.RANGES[0], rollup_cases.RANGES[2]):
            assert reports.run(remote, name, start, end, 25) == reports.run(
                local, name, start, end, 25
            ), name

    # The same bytes: every table file and every rollup (S3 names a compacted file by
    # its content, and keeps manifests beside).
    def as_local(text: str) -> str:
        return re.sub(r"data-[0-9a-f]{16}\.parquet", "data.parquet", text)

    def digest(warehouse: Warehouse, key: str) -> str:
        data = warehouse.store.read_bytes(key)
        assert data is not None
        if key.endswith("/sources.json"):  # the records name the files they were built from
            data = as_local(data.decode()).encode()
        return hashlib.sha256(data).hexdigest()

    local_files = {k: digest(local, k) for k in warehouse_cases._digests(local)}
    remote_files = {
        as_local(k): digest(remote, k)
        for k in warehouse_cases._digests(remote)
        if not k.startswith(f"{MANIFESTS}/")
    }
    assert any(k.startswith(f"{ROLLUPS}/") for k in local_files)
    assert remote_files == local_files


def test_the_cli_compacts_and_rebuild_refuses_on_s3_without_naming_the_secret(
    endpoint, tmp_path: Path, capsys
):
    url = _s3_url(endpoint, "live")
    settings = Settings(var_dir=tmp_path, warehouse_url=url)
    warehouse = Warehouse(settings.warehouse_location)
    warehouse_cases._land(warehouse, [warehouse_cases._view("2026-11-02")])
    warehouse_cases._land(warehouse, [warehouse_cases._view("2026-11-02", sku="B")])
    parser = argparse.ArgumentParser()
    analytics.add_parser(parser.add_subparsers(dest="command"))
    assert analytics.main(settings, parser.parse_args(["analytics", "compact"])) == 0
    assert "compacted 1 day partitions in s3 bucket" in capsys.readouterr().out
    # The live prefix is not empty; --replace needs a rename an object store lacks.
    args = parser.parse_args(["analytics", "rebuild", "--out", url, "--no-progress"])
    assert analytics.main(settings, args) == 1
    assert "not empty" in capsys.readouterr().out
    args = parser.parse_args(["analytics", "rebuild", "--replace", "--no-progress"])
    assert analytics.main(settings, args) == 1
    said = capsys.readouterr().out
    assert "AGORA_WAREHOUSE_URL" in said and SECRET not in said
    assert SECRET not in warehouse.describe() and SECRET not in str(warehouse.root)
    consumer = analytics.warehouse_consumer(settings)
    assert consumer.root == url and consumer.journal_dir == tmp_path / "warehouse-journal"
    assert open_store(url) is warehouse.store  # one client per URL and process
