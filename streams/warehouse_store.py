"""Where the warehouse's files live: the storage port of ``streams.warehouse`` and its
two backends, a local directory and any S3-compatible object store.

``open_store(location)`` picks one from ``AGORA_WAREHOUSE_URL``:

* a path or ``file:///abs/dir``: ``LocalStore`` (``var/warehouse`` by default);
* ``s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1``: ``S3Store``
  (AWS S3, MinIO, Ceph, moto in the tests; ``endpoint`` left out for AWS itself).
  Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), never from the URL,
  so the URL can be logged; ``describe`` never names them. The bucket must exist.

Keys are ``/``-separated and relative to the root: ``events/day=2026-12-04/data.parquet``,
``rollups/month=2026-12/sales.parquet``. A table's files of one day are the
day's *visible* files; the two backends make them visible differently:

* local: a file is written under a temporary name and renamed into its day's
  directory; the directory listing is the truth (as before object stores).
* S3 (no rename, no append): objects are immutable and a day is what its
  manifest says, ``_manifests/day=2026-12-04.json`` (``{"tables": {"events":
  [names]...}}``, one for all tables of the day). Landing PUTs the new objects,
  then adds them to the manifest; compaction PUTs the merged object (named by
  its content's hash, so a replay gives the same name), swaps it for the
  absorbed ones in the manifest, then deletes them. Every manifest change is a
  compare-and-swap (``If-Match`` on its ETag, ``If-None-Match: *`` for the
  first), so a lander and a compactor in two processes never lose each other's
  update. An object no manifest names (a land cut short) is never read, and is
  swept by compaction once it is an hour old.

Table files are read with polars' own object-store reader (``storage_options``;
it fetches only the columns and row groups a scan needs); everything is written,
and the small rollup files re-read, with boto3 (a rollup is rewritten under the
same key, and the manifest needs conditional PUTs, which polars cannot make).
This module imports nothing of ours (``streams`` depends on no other part).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import boto3
import polars as pl
from botocore.config import Config
from botocore.exceptions import ClientError

from streams.events import uuid7
from streams.warehouse_url import local_path, parse_s3_url

DATA_FILE = "data.parquet"  # a compacted local day; on S3 ``data-<sha256[:16]>.parquet``
MANIFESTS = "_manifests"
# An unreferenced object younger than this may be a land in progress elsewhere.
ORPHAN_AGE = timedelta(hours=1)
_MISSING = {"404", "NoSuchKey", "NotFound"}
_CONFLICT = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}

# {day: {table: [file names]}}: which files of which table each day holds.
Layout = dict[date, dict[str, list[str]]]


class Missing(Exception):
    """A file named by the layout a read started from is gone (compacted since)."""


def day_of(name: str) -> date | None:
    """The day of a ``day=YYYY-MM-DD`` partition name, else None."""
    if not name.startswith("day="):
        return None
    try:
        return date.fromisoformat(name[4:])
    except ValueError:
        return None


def day_key(table: str, day: date) -> str:
    return f"{table}/day={day.isoformat()}"


class Store(Protocol):
    """What the warehouse needs of a storage backend (keys relative to the root)."""

    local: bool

    def describe(self) -> str: ...

    def layout(self, tables: Sequence[str]) -> Layout:
        """Every day holding files of ``tables``, and those files' names (sorted)."""
        ...

    def add(self, day: date, parts: Mapping[str, bytes]) -> list[str]:
        """Make one new file per table of ``parts`` visible in ``day`` (all at once on
        S3); their keys."""
        ...

    def replace(self, table: str, day: date, old: Sequence[str], data: bytes) -> str:
        """Make ``data`` the day's file in place of ``old`` (the day's other files stay),
        then delete ``old``; the new file's key."""
        ...

    def scan(self, keys: Sequence[str]) -> pl.LazyFrame:
        """Table files as one lazy frame (``Missing`` on collect if one is gone)."""
        ...

    def read(self, keys: Sequence[str]) -> pl.DataFrame:
        """Small files (rollups), read whole and concatenated."""
        ...

    def read_text(self, key: str) -> str | None: ...

    def read_bytes(self, key: str) -> bytes | None: ...

    def write(self, key: str, data: bytes) -> None:
        """Write a file readers see whole or not at all (replacing one there)."""
        ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> list[str]:
        """Every key under the root (for counts and emptiness checks)."""
        ...

    def lock(self) -> AbstractContextManager[None]:
        """Held while compacting (local: one compactor at a time on this machine)."""
        ...

    def sweep(self, layout: Layout) -> int:
        """Delete files no reader can see (S3: unlisted objects older than ORPHAN_AGE)."""
        ...


class LocalStore:
    """Files under a directory: write to a temporary name, rename into place."""

    local = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def layout(self, tables: Sequence[str]) -> Layout:
        out: Layout = {}
        for table in tables:
            base = self.root / table
            if not base.is_dir():
                continue
            for folder in base.iterdir():
                day = day_of(folder.name)
                if day is None or not folder.is_dir():
                    continue
                names = sorted(
                    n for n in os.listdir(folder) if n.endswith(".parquet") and n[0] != "."
                )
                out.setdefault(day, {})[table] = names
        return dict(sorted(out.items()))

    def _put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def add(self, day: date, parts: Mapping[str, bytes]) -> list[str]:
        written = []
        for table, data in parts.items():
            key = f"{day_key(table, day)}/batch-{uuid7()}.parquet"
            self._put(key, data)
            written.append(key)
        return written

    def replace(self, table: str, day: date, old: Sequence[str], data: bytes) -> str:
        key = f"{day_key(table, day)}/{DATA_FILE}"
        self._put(key, data)
        for name in old:
            if name != DATA_FILE:
                (self.root / day_key(table, day) / name).unlink(missing_ok=True)
        return key

    def scan(self, keys: Sequence[str]) -> pl.LazyFrame:
        return pl.scan_parquet([self.root / k for k in keys])

    def read(self, keys: Sequence[str]) -> pl.DataFrame:
        return pl.read_parquet([self.root / k for k in keys])

    def read_text(self, key: str) -> str | None:
        data = self.read_bytes(key)
        return None if data is None else data.decode()

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".compact.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sweep(self, layout: Layout) -> int:
        del layout
        return 0


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


class S3Store:
    """Immutable objects under ``prefix`` in one bucket, made visible by per-day manifests."""

    local = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.session = boto3.session.Session()
        self.client = client or self.session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            config=Config(
                connect_timeout=3,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=16,
                # Path-style addressing: MinIO, Ceph and moto serve one host for all buckets.
                s3={"addressing_style": "path" if endpoint else "auto"},
            ),
        )
        # Manifests by key: (ETag, tables); a listing names each one's ETag, so only
        # the days that changed since are fetched again.
        self._manifests: dict[str, tuple[str, dict[str, list[str]]]] = {}
        self._guard = threading.Lock()

    def describe(self) -> str:
        return f"s3 bucket {self.bucket}/{self.prefix} at {self.endpoint or 'AWS'}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    # --- plain objects -------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        body = reply["Body"]
        try:
            return bytes(body.read()), str(reply["ETag"])
        finally:
            body.close()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def read_text(self, key: str) -> str | None:
        data = self.read_bytes(key)
        return None if data is None else data.decode()

    def read_bytes(self, key: str) -> bytes | None:
        got = self._get(key)
        return None if got is None else got[0]

    def delete(self, key: str) -> None:
        self._delete([key])

    def _delete(self, keys: Sequence[str]) -> None:
        objects = [{"Key": self.prefix + k} for k in keys]
        for start in range(0, len(objects), 1000):  # the API's per-call limit
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects[start : start + 1000], "Quiet": True}
            )

    def _list(self, under: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + under):
            yield from page.get("Contents", [])

    def keys(self) -> list[str]:
        return sorted(str(o["Key"])[len(self.prefix) :] for o in self._list(""))

    def read(self, keys: Sequence[str]) -> pl.DataFrame:
        def one(key: str) -> pl.DataFrame:
            got = self._get(key)
            if got is None:
                raise Missing(key)
            return pl.read_parquet(io.BytesIO(got[0]))

        with ThreadPoolExecutor(min(16, max(1, len(keys)))) as pool:
            return pl.concat(list(pool.map(one, keys)))

    def storage_options(self) -> dict[str, str]:
        """polars' (object_store's) options: the endpoint, and boto3's current credentials
        (so a profile or an instance role works the same; never logged)."""
        options = {"aws_region": self.region}
        if self.endpoint:
            options["aws_endpoint_url"] = self.endpoint
            options["aws_allow_http"] = "true" if self.endpoint.startswith("http:") else "false"
        credentials = self.session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            options["aws_access_key_id"] = frozen.access_key
            options["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                options["aws_session_token"] = frozen.token
        return options

    def scan(self, keys: Sequence[str]) -> pl.LazyFrame:
        return pl.scan_parquet([self.url(k) for k in keys], storage_options=self.storage_options())

    # --- manifests -----------------------------------------------------------------------

    def _manifest_key(self, day: date) -> str:
        return f"{MANIFESTS}/day={day.isoformat()}.json"

    def _manifest(self, key: str) -> tuple[str | None, dict[str, list[str]]]:
        got = self._get(key)
        if got is None:
            return None, {}
        tables = json.loads(got[0])["tables"]
        with self._guard:
            self._manifests[key] = (got[1], tables)
        return got[1], tables

    def layout(self, tables: Sequence[str]) -> Layout:
        listed = {
            str(o["Key"])[len(self.prefix) :]: str(o["ETag"]) for o in self._list(f"{MANIFESTS}/")
        }
        with self._guard:
            stale = [k for k, etag in listed.items() if self._manifests.get(k, ("",))[0] != etag]
        if stale:
            with ThreadPoolExecutor(min(16, len(stale))) as pool:
                list(pool.map(self._manifest, stale))
        out: Layout = {}
        with self._guard:
            for key in sorted(listed):
                day = day_of(key[len(MANIFESTS) + 1 : -len(".json")])
                cached = self._manifests.get(key)
                if day is None or cached is None:
                    continue
                held = {t: list(cached[1][t]) for t in tables if cached[1].get(t)}
                if held:
                    out[day] = held
        return out

    def _swap(
        self,
        day: date,
        change: Callable[[dict[str, list[str]]], dict[str, list[str]] | None],
    ) -> None:
        """Compare-and-swap the day's manifest: ``change`` gets the current tables and
        answers the new ones (None: nothing to change); retried when another writer won."""
        key = self._manifest_key(day)
        for attempt in range(50):
            etag, tables = self._manifest(key)
            new = change({t: list(n) for t, n in tables.items()})
            if new is None:
                return
            body = json.dumps(
                {"day": day.isoformat(), "tables": {t: sorted(n) for t, n in new.items() if n}},
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=body,
                    ContentType="application/json",
                    **condition,
                )
                return
            except ClientError as exc:
                if _code(exc) not in _CONFLICT and not (etag and _code(exc) in _MISSING):
                    raise
            time.sleep(min(0.5, 0.01 * 2**attempt))
        raise RuntimeError(f"warehouse manifest {key}: too much contention, gave up")

    def add(self, day: date, parts: Mapping[str, bytes]) -> list[str]:
        names = {table: f"batch-{uuid7()}.parquet" for table in parts}
        for table, data in parts.items():
            self.write(f"{day_key(table, day)}/{names[table]}", data)

        def added(tables: dict[str, list[str]]) -> dict[str, list[str]]:
            for table, name in names.items():
                tables.setdefault(table, []).append(name)
            return tables

        self._swap(day, added)
        return [f"{day_key(t, day)}/{n}" for t, n in names.items()]

    def replace(self, table: str, day: date, old: Sequence[str], data: bytes) -> str:
        name = f"data-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        self.write(f"{day_key(table, day)}/{name}", data)
        gone = set(old) - {name}

        def swapped(tables: dict[str, list[str]]) -> dict[str, list[str]]:
            kept = [n for n in tables.get(table, []) if n not in gone and n != name]
            tables[table] = [*kept, name]
            return tables

        self._swap(day, swapped)
        # Readers of the previous manifest may still want these: they find them gone and
        # read the new manifest again (``Missing``).
        self._delete([f"{day_key(table, day)}/{n}" for n in sorted(gone)])
        return f"{day_key(table, day)}/{name}"

    def lock(self) -> AbstractContextManager[None]:
        # No lock on an object store: every manifest change is a compare-and-swap, and
        # rollups are a pure function of the files they name (two writers write the same).
        return nullcontext()

    def sweep(self, layout: Layout) -> int:
        listed = {
            (d, t, n) for d, tables in layout.items() for t, names in tables.items() for n in names
        }
        cutoff = datetime.now(UTC) - ORPHAN_AGE
        orphans = []
        for table in {t for tables in layout.values() for t in tables}:
            for item in self._list(f"{table}/day="):
                key = str(item["Key"])[len(self.prefix) :]
                folder, _, name = key.rpartition("/")
                day = day_of(folder.rpartition("/")[2])
                if day is None or (day, table, name) in listed:
                    continue
                if item["LastModified"] < cutoff:
                    orphans.append(key)
        self._delete(orphans)
        return len(orphans)


@lru_cache(maxsize=8)
def _s3(url: str) -> S3Store:
    # One client (and manifest cache) per URL and process: boto3 clients are thread-safe
    # and slow to build, and the API opens the warehouse on every report.
    return S3Store(**parse_s3_url(url))


def open_store(location: str | Path) -> LocalStore | S3Store:
    """The store ``location`` names (see the module doc); ValueError if it names none."""
    path = local_path(location)
    if path is not None:
        return LocalStore(path)
    parse_s3_url(str(location))  # validate before caching
    return _s3(str(location))
