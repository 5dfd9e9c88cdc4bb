"""The audit log: append-only, hash-chained records of operator actions and security events.

Each record is ``(seq, event_id, at, actor, action, target, details)`` plus
``prev_hash`` (the previous record's hash; 64 zeros for the first) and
``hash = sha256(prev_hash + "\\n" + audit_canonical(record))``, the canonical
text being PostgreSQL's own deterministic ``jsonb`` text of a JSON array of
the fields (SQL function in migration 0010), so any reader renders the same
bytes. ``seq``
counts from 1 with no gap. Appends serialize on a transaction-scoped advisory
lock, so the chain never forks; ``event_id`` makes an append idempotent.

``verify`` walks the table in ``seq`` order and names the first record that
was edited (its hash no longer recomputes), deleted (a gap in ``seq``, or a
``prev_hash`` that is not the hash before it) or inserted out of band. Removing
the newest records leaves a shorter but valid chain: only an anchor outside our
database can show that. ``AnchorPort`` is that hook: the ledger publishes the
head (``chain_head``) somewhere we cannot rewrite, and ``verify`` accepts the
head it anchored (``expected``) and checks the chain still contains it.

Fed by ``AuditConsumer`` (``auth.*``, ``user.erased``, ``admin.action`` events
from Pulsar). ``streams`` imports nothing else of ours.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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
    """``sha256(prev_hash "\n" canon)``; ``canon`` is ``audit_canonical(...)`` from PostgreSQL."""
    return hashlib.sha256(f"{prev_hash}\n{canon}".encode()).hexdigest()


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
    args = (seq, uuid.UUID(event_id), at, actor, action, target, json.dumps(dict(details)))
    canon = await conn.fetchval(
        "SELECT audit_canonical($1, $2, $3, $4, $5, $6, $7::text::jsonb)", *args
    )
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
class Verdict:
    ok: bool
    records: int
    head: Appended | None
    problem: str | None = None
    bad_seq: int | None = None


class ChainWalker:
    """Checks ``(seq, prev_hash, hash, canon)`` rows fed in ``seq`` order; the first fault wins."""

    def __init__(self, expected: Appended | None = None) -> None:
        self.expected = expected
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


_ALL_ROWS = (
    "SELECT seq, prev_hash, hash,"
    " audit_canonical(seq, event_id, at, actor, action, target, details) AS canon"
    " FROM audit_log ORDER BY seq"
)


async def verify(
    conn: asyncpg.Connection, expected: Appended | None = None, batch: int = 20_000
) -> Verdict:
    """Check the whole chain in one snapshot (and against an anchored head, if given).

    PostgreSQL renders each record's canonical text; the hashes and links are
    recomputed here, streaming (memory stays flat).
    """
    walker = ChainWalker(expected)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(_ALL_ROWS, prefetch=batch):
            failed = walker.step(row)
            if failed is not None:
                return failed
    return walker.finish()


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
