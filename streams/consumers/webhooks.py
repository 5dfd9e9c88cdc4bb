"""Operator webhooks: events -> signed HTTP deliveries, retried with backoff for 24 h.

``WebhookConsumer`` inserts one ``webhook_deliveries`` row per live webhook
subscribed to the event, in the transaction of the processed event id (a
redelivered event adds nothing). ``deliver_due`` posts due rows through the
injected ``WebhookPoster`` (``cluster/adapters/webhook_delivery.py``: SSRF
re-check, no redirects, timeout) and records the outcome:

* 2xx: ``delivered``.
* anything else: ``attempts + 1`` and ``next_attempt_at = now + min(2^attempts * base,
  max_backoff)`` (+ up to 10 % jitter); once the first try is older than
  ``give_up_after_s`` (24 h) the row is ``dead`` (the dead letter; an operator
  can redeliver it from the API).

Signature (documented in the README): header
``Agora-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
receivers recompute it over the raw body and refuse a ``t`` older than 5 minutes
(replay window). Also ``Agora-Event-Id``, ``Agora-Event-Type`` and
``Agora-Delivery-Id``; the body is the event envelope JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import ray

from streams.consumer import IdempotentConsumer
from streams.events import EVENT_TYPES, Envelope, encode, topic_for

log = logging.getLogger(__name__)

# Event types operators may subscribe to (no account or security events: personal data).
WEBHOOK_DOMAINS = ("orders", "payments", "inventory", "catalog")
REPLAY_WINDOW_S = 300


def subscribable_events() -> list[str]:
    return sorted(n for n, t in EVENT_TYPES.items() if t.domain in WEBHOOK_DOMAINS)


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str, body: bytes, header: str, now: int, window_s: int = REPLAY_WINDOW_S
) -> bool:
    """What a receiver does (and the README shows): recompute, compare, check the window."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > window_s:
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


@dataclass(frozen=True)
class PostResult:
    status: int | None  # None: no HTTP answer (refused, timeout, blocked address)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookPoster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult: ...


# (stored secret, webhook_id) -> the secret: the stored value is sealed at rest by the
# cluster layer, which injects the opener (cluster/crypto/secretbox.py).
SecretOpener = Callable[[str, str], str]


@dataclass(frozen=True)
class WebhooksConfig:
    database_url: str
    pulsar_url: str
    tenant: str = "agora"
    namespace: str = "events"
    base_backoff_s: float = 1.0
    max_backoff_s: float = 3600.0
    give_up_after_s: float = 86_400.0
    poll_ms: int = 200
    name: str = "webhooks"


class WebhookConsumer(IdempotentConsumer):
    max_attempts = 3
    # Events waiting together are recorded in one transaction (``IdempotentConsumer``).
    batch_max = 32

    def __init__(self, config: WebhooksConfig) -> None:
        topics = sorted(
            {topic_for(e, config.tenant, config.namespace) for e in subscribable_events()}
        )
        super().__init__(name=config.name, topics=topics)
        self.queued = asyncio.Event()

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        applied = await super().handle(pool, envelope)
        if applied:
            self.queued.set()
        return applied

    async def handle_batch(self, pool: asyncpg.Pool, envelopes: Sequence[Envelope]) -> int:
        applied = await super().handle_batch(pool, envelopes)
        if applied:
            self.queued.set()
        return applied

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        declared = EVENT_TYPES.get(envelope.type)
        if declared is None or declared.domain not in WEBHOOK_DOMAINS:
            return
        if envelope.version != declared.version:
            raise ValueError(f"{envelope.type} v{envelope.version} is not known")
        await conn.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body)"
            " SELECT webhook_id, $1::uuid, $2, $3 FROM webhooks"
            " WHERE deleted_at IS NULL AND $2 = ANY(events)"
            " ON CONFLICT (webhook_id, event_id) DO NOTHING",
            envelope.id,
            envelope.type,
            encode(envelope).decode(),
        )


_CLAIM = """
SELECT d.delivery_id, d.event_id, d.event_type, d.body, d.attempts, d.created_at,
       d.webhook_id, w.url, w.secret, w.deleted_at
FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
WHERE d.status = 'pending' AND d.next_attempt_at <= now()
ORDER BY d.next_attempt_at, d.delivery_id
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""


def backoff_s(attempts: int, config: WebhooksConfig) -> float:
    delay = min(config.base_backoff_s * 2 ** min(attempts, 30), config.max_backoff_s)
    return delay * (1 + random.random() / 10)  # jitter, not security


def _as_stored(stored: str, _webhook_id: str) -> str:
    return stored


async def deliver_due(
    pool: asyncpg.Pool,
    poster: WebhookPoster,
    config: WebhooksConfig,
    limit: int = 20,
    opener: SecretOpener = _as_stored,
) -> int:
    """Post due deliveries (concurrently, rows locked meanwhile); returns how many succeeded."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_CLAIM, limit)
        if not rows:
            return 0
        results = await asyncio.gather(*(_post(poster, row, opener) for row in rows))
        delivered = 0
        now = time.time()
        for row, result in zip(rows, results, strict=True):
            if row["deleted_at"] is not None:
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'dead', last_error = 'webhook deleted'"
                    " WHERE delivery_id = $1",
                    row["delivery_id"],
                )
                continue
            if result.ok:
                delivered += 1
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),"
                    " attempts = attempts + 1, last_attempt_at = now(), last_status = $2,"
                    " last_error = NULL WHERE delivery_id = $1",
                    row["delivery_id"],
                    result.status,
                )
                continue
            age = now - row["created_at"].timestamp()
            dead = age >= config.give_up_after_s
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(),"
                " last_status = $2, last_error = $3,"
                " status = CASE WHEN $4 THEN 'dead' ELSE 'pending' END,"
                " next_attempt_at = now() + make_interval(secs => $5) WHERE delivery_id = $1",
                row["delivery_id"],
                result.status,
                (result.error or f"HTTP {result.status}")[:500],
                dead,
                backoff_s(row["attempts"], config),
            )
        return delivered


async def _post(poster: WebhookPoster, row: Mapping[str, Any], opener: SecretOpener) -> PostResult:
    if row["deleted_at"] is not None:
        return PostResult(None, "webhook deleted")
    body = row["body"].encode()
    try:
        secret = opener(row["secret"], row["webhook_id"])
    except Exception as exc:  # a secret that cannot be opened: never post unsigned
        return PostResult(None, f"secret: {type(exc).__name__}")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Agora-Webhooks/1",
        "Agora-Event-Id": str(row["event_id"]),
        "Agora-Event-Type": row["event_type"],
        "Agora-Delivery-Id": str(row["delivery_id"]),
        "Agora-Signature": signature_header(secret, body, int(time.time())),
    }
    try:
        return await poster.post(row["url"], body, headers)
    except Exception as exc:
        return PostResult(None, f"{type(exc).__name__}: {exc}")


class WebhooksHost:
    """Runs the webhook consumer and the delivery loop; restarted with the actor."""

    def __init__(
        self, config: WebhooksConfig, poster: WebhookPoster, opener: SecretOpener = _as_stored
    ) -> None:
        self._config = config
        self._poster = poster
        self._opener = opener
        self._consumer = WebhookConsumer(config)
        self._pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._delivered = 0
        self._last_error: str | None = None
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            self._ensure_running()

    async def start(self) -> dict[str, Any]:
        self._ensure_running()
        return await self.health()

    async def health(self) -> dict[str, Any]:
        self._ensure_running()
        return {
            "running": bool(self._tasks) and all(not t.done() for t in self._tasks),
            "delivered_total": self._delivered,
            "last_error": self._last_error,
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        self._stop.set()
        self._consumer.queued.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ensure_running(self) -> None:
        if self._stop.is_set() or (self._tasks and all(not t.done() for t in self._tasks)):
            return
        for task in self._tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume(), name="webhooks-consume"),
            loop.create_task(self._deliver_loop(), name="webhooks-deliver"),
        ]

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                dsn=self._config.database_url, min_size=1, max_size=3
            )
        return self._pool

    async def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                pool = await self._connect()
                await self._consumer.run(pool, self._config.pulsar_url, self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"consume: {type(exc).__name__}: {exc}"
                log.warning("webhooks: %s", self._last_error)
                await asyncio.sleep(1)

    async def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._delivered += await deliver_due(
                    await self._connect(), self._poster, self._config, opener=self._opener
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"deliver: {type(exc).__name__}: {exc}"
                log.warning("webhooks: %s", self._last_error)
            self._consumer.queued.clear()
            try:
                await asyncio.wait_for(self._consumer.queued.wait(), self._config.poll_ms / 1000)
            except TimeoutError:
                pass


WebhooksActor = ray.remote(max_restarts=-1, max_task_retries=0)(WebhooksHost)


def webhooks_actor_name() -> str:
    return "agora:webhooks:0"


def get_or_create_webhooks(
    namespace: str,
    config: WebhooksConfig,
    poster: WebhookPoster,
    opener: SecretOpener = _as_stored,
) -> Any:
    handle: Any = WebhooksActor.options(  # type: ignore[attr-defined]
        name=webhooks_actor_name(),
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(config, poster, opener)
    handle.start.remote()
    return handle
