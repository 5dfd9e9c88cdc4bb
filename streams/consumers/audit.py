"""The audit log: append-only, hash-chained records of operator actions and security events.

Each record is ``(seq, event_id, at, actor, action, target, details)`` plus
``prev_hash`` (the previous record's hash; 64 zeros for the first) and
``hash = sha256(prev_hash + "\\n" + canonical(record))``, the canonical text
being the ``jsonb`` text of a JSON array of the fields: ``canonical`` below
builds it, for the writer and the verifier alike, byte for byte what the SQL
function ``audit_canonical`` (migration 0010, which wrote the first chains)
renders; ``details`` is PostgreSQL's own ``jsonb`` text of the stored value.
``seq`` counts from 1 with no gap. Appends serialize on a transaction-scoped advisory
lock, so the chain never forks; ``event_id`` makes an append idempotent.

``verify`` walks the table in ``seq`` order (pages of the stored columns from a
server-side cursor, one snapshot; or ranges in worker processes) and names the
first record that was edited (its hash no longer recomputes), deleted (a gap in
``seq``, or a ``prev_hash`` that is not the hash before it) or inserted out of
band. Removing
the newest records leaves a shorter but valid chain: only an anchor outside our
database can show that. ``AnchorPort`` is that hook: the ledger publishes the
head (``chain_head``) somewhere we cannot rewrite, and ``verify`` accepts the
head it anchored (``expected``) and checks the chain still contains it.

Fed by ``AuditConsumer`` (``auth.*``, ``user.erased``, ``admin.action`` events
from Pulsar). ``streams`` imports nothing else of ours.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any, Protocol

import asyncpg

from streams.consumer import IdempotentConsumer
from streams.events import (
    ADMIN_ACTION,
    AUTH_LOGGED_IN,
    AUTH_LOGIN_FAILED,
    AUTH_MFA_ENABLED,
    AUTH_PASSWORD_CHANGED,
    AUTH_REFRESH_REUSED,
    AUTH_SESSION_REVOKED,
    EVENT_TYPES,
    USER_ERASED,
    Envelope,
    topic_for,
)

GENESIS = "0" * 64
_LOCK = 0x4A60_A0D1

# Security events recorded, by event type (the action is the event type).
SECURITY_EVENTS = (
    AUTH_LOGGED_IN.name,
    AUTH_LOGIN_FAILED.name,
    AUTH_REFRESH_REUSED.name,
    AUTH_SESSION_REVOKED.name,
    AUTH_MFA_ENABLED.name,
    AUTH_PASSWORD_CHANGED.name,
    USER_ERASED.name,
)


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: str, canon: str) -> str:
    """``sha256(prev_hash "\n" canon)``; ``canon`` is ``canonical(...)`` of the record."""
    return hashlib.sha256(f"{prev_hash}\n{canon}".encode()).hexdigest()


def canonical_at(at: datetime) -> str:
    """``to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')``: always six
    fraction digits and a four-digit year (``strftime("%Y")`` drops the zeros)."""
    if at.tzinfo is UTC:  # what asyncpg returns: drop the "+00:00"
        return f"{at.isoformat(timespec='microseconds')[:-6]}Z"
    if at.tzinfo is not None and at.utcoffset() is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    # A naive datetime is taken as UTC, as asyncpg stores it.
    return f"{at.isoformat(timespec='microseconds')}Z"


# PostgreSQL's timestamp epoch: a timestamptz travels as int64 microseconds since it.
_PG_EPOCH = datetime(2000, 1, 1)
_DAY_US = 86_400_000_000
_day_text: dict[int, str] = {}


def canonical_at_us(us: int) -> str:
    """``canonical_at`` of the time ``us`` microseconds after 2000-01-01 UTC (the wire
    form, decoded with no datetime): the date part is cached per day, the rest is
    arithmetic. Years 1-9999 only (``_COLUMNS`` hands out nothing else)."""
    day, rest = divmod(us, _DAY_US)
    date = _day_text.get(day)
    if date is None:
        if len(_day_text) > 100_000:
            _day_text.clear()
        d = _PG_EPOCH + timedelta(days=day)
        date = _day_text[day] = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
    seconds, micro = divmod(rest, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{date}{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}Z"


def canonical(
    seq: int,
    event_id: str,
    at: datetime,
    actor: str | None,
    action: str,
    target: str | None,
    details: str,
) -> str:
    """The canonical text of a record: the one function both ``append`` and ``verify`` use.

    It is ``jsonb_build_array(seq, event_id, at, actor, action, target,
    details)::text`` (the SQL ``audit_canonical``), built here: jsonb's text puts
    ", " between elements, and escapes a string exactly as ``json``'s
    ``encode_basestring`` does (``\\" \\\\ \\b \\f \\n \\r \\t``, other controls as
    ``\\u00xx``, the rest verbatim). ``details`` is PostgreSQL's ``jsonb`` text of
    the stored value (key order and number forms are jsonb's, so only PostgreSQL
    renders them); ``event_id`` is the uuid's text. Built here because
    PostgreSQL's rendering of the whole array (``to_char``, ``jsonb_build_array``)
    cost ``verify`` more than reading the rows; and the verifier no longer takes
    its text from a SQL function, which a superuser could replace so that an
    edited row renders its old text.
    """
    return _canonical_text(seq, event_id, canonical_at(at), actor, action, target, details)


def _canonical_text(
    seq: int,
    event_id: str,
    at_text: str,
    actor: str | None,
    action: str,
    target: str | None,
    details: str,
) -> str:
    """``canonical`` with the time already rendered (``canonical_at`` or ``canonical_at_us``)."""
    return (
        f'[{seq}, "{event_id}", "{at_text}", '
        f"{_json_text(actor)}, {encode_basestring(action)}, {_json_text(target)}, {details}]"
    )


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


@dataclass(frozen=True)
class Appended:
    seq: int
    hash: str


async def append(
    conn: asyncpg.Connection,
    *,
    event_id: str,
    at: datetime,
    actor: str | None,
    action: str,
    target: str | None,
    details: Mapping[str, Any],
) -> Appended | None:
    """Append one record in the caller's transaction; None if ``event_id`` is already there."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
    if await conn.fetchval("SELECT 1 FROM audit_log WHERE event_id = $1", uuid.UUID(event_id)):
        return None
    head = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev = (1, GENESIS) if head is None else (head["seq"] + 1, head["hash"])
    event = uuid.UUID(event_id)
    args = (seq, event, at, actor, action, target, json.dumps(dict(details)))
    # The details as jsonb will store and render them (key order, number forms).
    details_text = await conn.fetchval("SELECT $1::text::jsonb::text", args[6])
    canon = canonical(seq, str(event), at, actor, action, target, details_text)
    digest = record_hash(prev, canon)
    await conn.execute(
        "INSERT INTO audit_log (seq, event_id, at, actor, action, target, details, prev_hash,"
        " hash) VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)",
        *args,
        prev,
        digest,
    )
    return Appended(seq, digest)


@dataclass(frozen=True)
class Span:
    """A run of records checked on its own by a ``mid_chain`` walker, for ``join``.

    ``first`` is its first record's ``(seq, prev_hash)`` (None: no record);
    ``count``, ``prev`` and ``head`` the walker's state after it; ``failed`` its
    first fault.
    """

    first: tuple[int, str] | None
    count: int = 0
    prev: str = GENESIS
    head: Appended | None = None
    failed: Verdict | None = None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    head: Appended | None
    problem: str | None = None
    bad_seq: int | None = None


class ChainWalker:
    """Checks ``(seq, prev_hash, hash, canon)`` rows fed in ``seq`` order; the first fault wins."""

    def __init__(
        self, expected: Appended | None = None, at_text: Callable[[Any], str] = canonical_at
    ) -> None:
        self.expected = expected
        # How ``feed`` renders a row's ``at``: a datetime, or int microseconds (``_int_times``).
        self.at_text = at_text
        self.prev = GENESIS
        self.count = 0
        self.head: Appended | None = None

    def step(self, row: Mapping[str, Any]) -> Verdict | None:
        """None while the chain holds; the failing verdict at the first fault."""
        want_seq = self.count + 1
        if row["seq"] != want_seq:
            return self._fail(f"record {want_seq} is missing (next is {row['seq']})", want_seq)
        if row["prev_hash"] != self.prev:
            return self._fail(f"record {row['seq']} does not follow the one before", row["seq"])
        if record_hash(self.prev, row["canon"]) != row["hash"]:
            return self._fail(f"record {row['seq']} was altered", row["seq"])
        self.prev, self.count = row["hash"], self.count + 1
        self.head = Appended(row["seq"], row["hash"])
        expected = self.expected
        if expected is not None and row["seq"] == expected.seq and row["hash"] != expected.hash:
            return self._fail(f"record {row['seq']} differs from the anchored head", row["seq"])
        return None

    def feed(self, rows: Iterable[Sequence[Any]]) -> Verdict | None:
        """``step`` over stored rows (``_RECORDS``' columns), the canonical text built here.

        One tight loop with the state in locals: this is where ``verify`` spends
        its time. Accepted records have ``seq == count`` (the seq check), so the
        head is ``(count, prev)``.
        """
        prev, count = self.prev, self.count
        expected = self.expected
        anchor_seq = -1 if expected is None else expected.seq
        sha256, at_text = hashlib.sha256, self.at_text
        failed: tuple[str, int] | None = None
        for seq, event_id, at, actor, action, target, details, prev_hash, digest in rows:
            if seq != count + 1:
                failed = (f"record {count + 1} is missing (next is {seq})", count + 1)
                break
            if prev_hash != prev:
                failed = (f"record {seq} does not follow the one before", seq)
                break
            if at is None:  # out of Python's range (``_COLUMNS``): not written by append
                failed = (f"record {seq} was altered", seq)
                break
            canon = _canonical_text(seq, event_id, at_text(at), actor, action, target, details)
            if sha256(f"{prev}\n{canon}".encode()).hexdigest() != digest:
                failed = (f"record {seq} was altered", seq)
                break
            prev, count = digest, count + 1
            if seq == anchor_seq and expected is not None and digest != expected.hash:
                failed = (f"record {seq} differs from the anchored head", seq)
                break
        if count != self.count:
            self.head = Appended(count, prev)
        self.prev, self.count = prev, count
        return None if failed is None else self._fail(*failed)

    @classmethod
    def mid_chain(
        cls,
        seq: int,
        prev_hash: str,
        expected: Appended | None,
        at_text: Callable[[Any], str] = canonical_at,
    ) -> ChainWalker:
        """A walker that takes a span's first record ``(seq, prev_hash)`` on trust: the
        span alone cannot know what came before; ``join`` checks that link later."""
        walker = cls(expected, at_text)
        walker.count, walker.prev = seq - 1, prev_hash
        return walker

    def join(self, span: Span) -> Verdict | None:
        """Take a span checked on its own (``mid_chain``) as if ``step`` had walked it.

        Its first record must follow this walker's last (seq and link, as ``step``
        checks); then its own first fault, if any, is the chain's, with the same
        count (every record before it was accepted, so ``count == seq - 1``) and
        the head before the span when the fault is its first record.
        """
        if span.first is None:
            return None
        seq, prev_hash = span.first
        if seq != self.count + 1:
            want_seq = self.count + 1
            return self._fail(f"record {want_seq} is missing (next is {seq})", want_seq)
        if prev_hash != self.prev:
            return self._fail(f"record {seq} does not follow the one before", seq)
        if span.failed is not None:
            failed = span.failed
            return Verdict(
                False, failed.records, failed.head or self.head, failed.problem, failed.bad_seq
            )
        self.count, self.prev, self.head = span.count, span.prev, span.head or self.head
        return None

    def finish(self) -> Verdict:
        expected = self.expected
        if expected is not None and (self.head is None or self.head.seq < expected.seq):
            return self._fail(f"records after {self.count} were removed", self.count + 1)
        return Verdict(True, self.count, self.head)

    def _fail(self, problem: str, seq: int) -> Verdict:
        return Verdict(False, self.count, self.head, problem, seq)


def check_chain(rows: Iterable[Mapping[str, Any]], expected: Appended | None = None) -> Verdict:
    """Check ``(seq, prev_hash, hash, canon)`` rows in ``seq`` order."""
    walker = ChainWalker(expected)
    for row in rows:
        failed = walker.step(row)
        if failed is not None:
            return failed
    return walker.finish()


# The stored columns as they were hashed: ``canonical`` takes them in this order. A time
# Python cannot hold (after 9999, BC) would fail the whole page's decoding; no ``append``
# wrote one, so it comes back NULL and ``feed`` calls that record altered.
_COLUMNS = (
    "SELECT seq, event_id::text, CASE WHEN at BETWEEN '0001-01-01 00:00:00+00'"
    " AND '9999-12-31 23:59:59.999999+00' THEN at END AS at, actor, action, target,"
    " details::text, prev_hash, hash FROM audit_log"
)
_RECORDS = f"{_COLUMNS} ORDER BY seq"


async def verify(
    conn: asyncpg.Connection,
    expected: Appended | None = None,
    batch: int = 50_000,
    *,
    dsn: str | None = None,
    workers: int = 1,
) -> Verdict:
    """Check the whole chain in one snapshot (and against an anchored head, if given).

    A server-side cursor hands over ``batch`` rows at a time (memory stays flat);
    the canonical texts, hashes and links are all recomputed here
    (``ChainWalker.feed``), so PostgreSQL only reads and sends the columns.
    With ``dsn`` and ``workers > 1``, ``workers`` processes check seq ranges on
    their own connections in this snapshot (``verify_parallel``).
    """
    if dsn is not None and workers > 1:
        return await verify_parallel(conn, dsn, workers, expected, batch)
    await _int_times(conn)  # for this walk only: the caller's connection is given back as it was
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _walk(conn, ChainWalker(expected, canonical_at_us), batch)
    finally:
        await conn.reset_type_codec("timestamptz", schema="pg_catalog")


async def _int_times(conn: asyncpg.Connection) -> None:
    """Decode ``timestamptz`` on ``conn`` as its wire int (microseconds since 2000):
    no datetime per row; ``canonical_at_us`` renders it. Reset it to give ``conn`` back."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        format="tuple",
        encoder=lambda us: (us,),
        decoder=lambda wire: wire[0],
    )


async def _walk(conn: asyncpg.Connection, walker: ChainWalker, batch: int) -> Verdict:
    cursor = await conn.cursor(_RECORDS)
    while rows := await cursor.fetch(batch):
        failed = walker.feed(rows)
        if failed is not None:
            return failed
    return walker.finish()


_RANGE = f"{_COLUMNS} WHERE seq >= $1 AND seq < $2 ORDER BY seq"
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


async def verify_parallel(
    conn: asyncpg.Connection,
    dsn: str,
    workers: int,
    expected: Appended | None = None,
    batch: int = 50_000,
) -> Verdict:
    """``verify`` with the seq range cut in ``4 * workers`` spans checked by forked processes
    (a range under ``2 * batch`` seqs is walked here, as ``verify`` does).

    A record is valid from its own row (its hash recomputes from its
    ``prev_hash``) and its predecessor's (``prev_hash`` is that hash, seq one
    more), so spans check independently; their boundaries are linked here, in
    order (``ChainWalker.join``), which gives the verdict the sequential walk
    gives, and the first faulty span ends the walk. Every worker imports this
    connection's exported snapshot, so all see the same rows. Forked, not
    spawned: the workers need no imports (``agora`` imports Ray, seconds).
    """
    walker = ChainWalker(expected)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        bounds = await conn.fetchrow("SELECT min(seq), max(seq) FROM audit_log")
        if bounds[0] is None:
            return walker.finish()
        lo, hi = bounds[0], bounds[1] + 1
        if hi - lo < 2 * batch:  # a short chain: forking would cost more than it saves
            return await _walk(conn, walker, batch)
        size = -(-(hi - lo) // (4 * workers))
        loop = asyncio.get_running_loop()
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        try:
            spans = [
                loop.run_in_executor(
                    pool, check_range, dsn, snapshot, start, min(start + size, hi), expected, batch
                )
                for start in range(lo, hi, size)
            ]
            for span in spans:
                failed = walker.join(await span)
                if failed is not None:
                    return failed
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return walker.finish()


def check_range(
    dsn: str, snapshot: str, lo: int, hi: int, expected: Appended | None, batch: int
) -> Span:
    """The records with ``lo <= seq < hi`` in ``snapshot``, checked on their own (a worker)."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError("not a snapshot id")
    return asyncio.run(_check_range(dsn, snapshot, lo, hi, expected, batch))


async def _check_range(
    dsn: str, snapshot: str, lo: int, hi: int, expected: Appended | None, batch: int
) -> Span:
    conn = await asyncpg.connect(dsn)
    try:
        await _int_times(conn)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # SET takes no parameters; the id was checked to be hex and dashes.
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            cursor = await conn.cursor(_RANGE, lo, hi)
            rows = await cursor.fetch(batch)
            if not rows:
                return Span(None)
            first = (rows[0][0], rows[0][7])
            walker = ChainWalker.mid_chain(*first, expected, canonical_at_us)
            while rows:
                failed = walker.feed(rows)
                if failed is not None:
                    return Span(first, failed=failed)
                rows = await cursor.fetch(batch)
            return Span(first, walker.count, walker.prev, walker.head)
    finally:
        await conn.close()


async def chain_head(conn: asyncpg.Connection) -> Appended | None:
    """The newest record's (seq, hash): what an anchor publishes."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    return None if row is None else Appended(row["seq"], row["hash"])


class AnchorPort(Protocol):
    """Where the chain head is published out of our reach (``ledger.audit_anchor``).

    ``anchor`` is called with the current head; ``anchored`` returns the newest
    head anchored so far (None before the first), for ``verify(expected=...)``.
    """

    async def anchor(self, head: Appended) -> None: ...

    async def anchored(self) -> Appended | None: ...


# --- the consumer ---------------------------------------------------------------------


class AuditConsumer(IdempotentConsumer):
    """Security events and operator actions -> audit records, idempotently."""

    max_attempts = 3
    # Appends of one batch share a transaction: each reads the head its predecessor
    # wrote (same transaction), under the same advisory lock, so the chain is the one
    # one-at-a-time appends would build; one commit per batch instead of per record.
    batch_max = 32

    def __init__(
        self,
        tenant: str,
        namespace: str,
        name: str = "audit",
        anchor: Callable[[asyncpg.Pool], AnchorPort] | None = None,
        anchor_every_s: float = 5.0,
    ) -> None:
        """``anchor`` builds the anchor on the consumer's pool (a class pickles by name,
        so the consumer can be shipped to its actor); the chain head is anchored at most
        every ``anchor_every_s`` seconds, whenever it moved, idle or busy."""
        events = [*SECURITY_EVENTS, ADMIN_ACTION.name]
        topics = sorted({topic_for(e, tenant, namespace) for e in events})
        super().__init__(name=name, topics=topics)
        self._anchor_factory = anchor
        self._anchor_every_s = anchor_every_s
        self._anchor: AnchorPort | None = None
        self._anchored: Appended | None = None
        self._next_anchor_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # The built anchor holds a pool; the actor builds its own.
        return {**self.__dict__, "_anchor": None, "_anchored": None, "_next_anchor_at": 0.0}

    async def tick(self, pool: asyncpg.Pool) -> None:
        """Anchor the chain head when it moved and ``anchor_every_s`` has passed."""
        if self._anchor_factory is None or time.monotonic() < self._next_anchor_at:
            return
        self._next_anchor_at = time.monotonic() + self._anchor_every_s
        if self._anchor is None:
            self._anchor = self._anchor_factory(pool)
        async with pool.acquire() as conn:
            head = await chain_head(conn)
        if head is None or head == self._anchored:
            return
        await self._anchor.anchor(head)
        self._anchored = head

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        entry = audit_entry(envelope)
        if entry is None:
            return
        await append(conn, **entry)


def audit_entry(envelope: Envelope) -> dict[str, Any] | None:
    """The record an event makes (None: not audited); a bad one raises (dead-letter)."""
    declared = EVENT_TYPES.get(envelope.type)
    if envelope.type not in SECURITY_EVENTS and envelope.type != ADMIN_ACTION.name:
        return None
    if declared is not None and envelope.version != declared.version:
        raise ValueError(f"{envelope.type} v{envelope.version} is not known")
    at = datetime.fromisoformat(envelope.occurred_at.replace("Z", "+00:00"))
    payload = dict(envelope.payload)
    if envelope.type == ADMIN_ACTION.name:
        actor, action = payload.pop("actor", None), payload.pop("action", None)
        if not isinstance(actor, str) or not isinstance(action, str) or not action:
            raise ValueError("admin.action without actor or action")
        target = payload.pop("target", None)
        details = payload.pop("details", None) or {}
        if not isinstance(details, dict):
            raise ValueError("admin.action details must be an object")
        return {
            "event_id": envelope.id,
            "at": at,
            "actor": actor,
            "action": action,
            "target": None if target is None else str(target),
            "details": details,
        }
    user_id = payload.get("user_id")
    return {
        "event_id": envelope.id,
        "at": at,
        "actor": None if user_id is None else str(user_id),
        "action": envelope.type,
        "target": None if user_id is None else str(user_id),
        "details": payload,
    }
