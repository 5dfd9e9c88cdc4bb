"""Notifications: transactional email for account and order events, sent exactly-once-ish.

Two halves, both hosted by one Ray actor (``NotificationsHost``):

1. ``NotificationsConsumer`` (an ``IdempotentConsumer``) turns an event into a
   rendered mail and inserts it into ``mail_outbox`` in the transaction that
   records the event id as processed. A redelivered event changes nothing; a
   crash before the commit leaves neither the mail nor the processed id.
   Events that arrive together are applied in one transaction (``batch_max``,
   see ``streams.consumer``); a batch that fails is taken one event at a time.
2. ``send_due`` sends queued mail one row at a time: it locks the row
   (``FOR UPDATE SKIP LOCKED``), hands the message to SMTP, and marks it sent
   in the same transaction. An SMTP failure leaves the row queued with a
   backoff (``next_attempt_at``); nothing is lost while the server is away.
   The only duplicate left is a crash between the SMTP server's "250 OK" and
   our commit (milliseconds); every mail carries a Message-ID derived from its
   dedupe key, so even that duplicate is recognisable by the receiver.
   The send loop is woken by the commit of a transaction that queued a mail
   (and polls every ``poll_ms`` for retries and mail the API queued).

Who gets what. The user is read from PostgreSQL by id (events carry ids, not
addresses). An erased account (``erased_at`` set) or a missing one gets
nothing, and ``user.erased`` deletes its queued and sent mail rows. Every mail
here is transactional (account security, orders); none is marketing, so no
consent is needed; marketing mail, when it exists, must check
``users.consents->>'marketing'``. The locale is ``preferences.locale`` (``en``
or ``pt-BR``), else the configured default.

``streams`` imports nothing else of ours: the SMTP sender is injected (any
object with ``async send(message, sender, recipients)``), and so is the config.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Protocol

import asyncpg
import jinja2
import ray

from streams.consumer import IdempotentConsumer
from streams.events import (
    AUTH_MFA_ENABLED,
    AUTH_PASSWORD_CHANGED,
    EVENT_TYPES,
    ORDER_AWAITING_PAYMENT,
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_REFUNDED,
    ORDER_SHIPPED,
    USER_ERASED,
    USER_REGISTERED,
    Envelope,
    topic_for,
)

log = logging.getLogger(__name__)

LOCALES = ("pt-BR", "en")
MESSAGE_ID_DOMAIN = "agora.local"
_NAMESPACE = uuid.UUID("6f1d3c1e-9a55-4a43-9a4e-1c0b5d0e2a11")

# Event type -> mail kind (the template's strings are keyed by kind).
ACCOUNT_MAILS = {
    USER_REGISTERED.name: "welcome",
    AUTH_MFA_ENABLED.name: "mfa_enabled",
    AUTH_PASSWORD_CHANGED.name: "password_changed",
}
ORDER_MAILS = {
    ORDER_CONFIRMED.name: "order_confirmed",
    ORDER_AWAITING_PAYMENT.name: "order_awaiting_payment",
    ORDER_SHIPPED.name: "order_shipped",
    ORDER_CANCELLED.name: "order_cancelled",
    ORDER_REFUNDED.name: "order_refunded",
}


class MailSender(Protocol):
    """Hands one RFC 5322 message to a mail server; raises when it was not accepted."""

    async def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> None: ...


class PermanentMailError(Exception):
    """The server refused the message for good (5xx): retrying cannot help."""


@dataclass(frozen=True)
class NotificationsConfig:
    database_url: str
    pulsar_url: str
    mail_from: str
    tenant: str = "agora"
    namespace: str = "events"
    default_locale: str = "pt-BR"
    retry_max_s: float = 300.0
    poll_ms: int = 200
    name: str = "notifications"


# --- rendering ------------------------------------------------------------------------

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("streams.consumers", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    keep_trailing_newline=True,
)


def locale_of(preferences: dict[str, Any] | None, default: str = "pt-BR") -> str:
    """``pt-BR`` or ``en`` from a user's ``preferences.locale`` (``en-US`` counts as ``en``)."""
    wanted = str((preferences or {}).get("locale") or default).strip().lower()
    if wanted.startswith("en"):
        return "en"
    if wanted.startswith("pt"):
        return "pt-BR"
    return default if default in LOCALES else "pt-BR"


def money(minor: int | None, locale: str) -> str:
    """Centavos as ``R$ 1.234,56`` (pt-BR) or ``R$1,234.56`` (en)."""
    value = int(minor or 0)
    sign = "-" if value < 0 else ""
    whole, cents = divmod(abs(value), 100)
    grouped = f"{whole:,}"
    if locale == "pt-BR":
        return f"{sign}R$ {grouped.replace(',', '.')},{cents:02d}"
    return f"{sign}R${grouped}.{cents:02d}"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(kind: str, locale: str, **context: Any) -> Rendered:
    """Subject, plain text and HTML of mail ``kind`` in ``locale`` (``name``, ``order``, ...)."""
    locale = locale if locale in LOCALES else "pt-BR"
    values = {
        "kind": kind,
        "locale": locale,
        "name": None,
        "order": None,
        "code": None,
        "link": None,
        **context,
        "money": lambda minor: money(minor, locale),
    }
    text_module = _ENV.get_template("mail.txt").make_module(values)
    html = _ENV.get_template("mail.html").render(values)
    subject = str(getattr(text_module, "subject"))  # noqa: B009 - set by the template
    return Rendered(subject, str(text_module).strip() + "\n", html)


def message_id(dedupe_key: str) -> str:
    return f"<{uuid.uuid5(_NAMESPACE, dedupe_key)}@{MESSAGE_ID_DOMAIN}>"


def build_message(mail_from: str, to: str, rendered: Rendered, dedupe_key: str) -> str:
    """A multipart/alternative message (plain text first, then HTML)."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id(dedupe_key)
    msg["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps every line short and 7-bit, whatever the template holds.
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg.as_string()


# --- the mail outbox ------------------------------------------------------------------


async def queue_mail(
    conn: asyncpg.Connection,
    *,
    dedupe_key: str,
    kind: str,
    user_id: str | None,
    to: str,
    message: str,
) -> bool:
    """Queue a rendered message, in the caller's transaction; False if already queued."""
    queued = await conn.fetchval(
        "INSERT INTO mail_outbox (dedupe_key, kind, user_id, to_addr, message)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dedupe_key) DO NOTHING RETURNING mail_id",
        dedupe_key,
        kind,
        user_id,
        to,
        message,
    )
    return queued is not None


_CLAIM_MAIL = """
SELECT m.mail_id, m.to_addr, m.message, m.attempts, u.erased_at
FROM mail_outbox m LEFT JOIN users u ON u.user_id = m.user_id
WHERE m.sent_at IS NULL AND m.dead_at IS NULL AND m.next_attempt_at <= now()
ORDER BY m.next_attempt_at, m.mail_id
LIMIT 1
FOR UPDATE OF m SKIP LOCKED
"""


async def send_due(
    pool: asyncpg.Pool,
    sender: MailSender,
    mail_from: str,
    retry_max_s: float = 300.0,
    limit: int = 100,
) -> tuple[int, str | None]:
    """Send queued mail that is due, one row per transaction; (sent, last error).

    Stops at the first transient failure (the server is probably away): that
    row gets ``next_attempt_at = now() + min(2^attempts, retry_max_s)`` seconds.
    """
    envelope_from = parseaddr(mail_from)[1] or mail_from
    sent = 0
    for _ in range(limit):
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM_MAIL)
            if row is None:
                return sent, None
            if row["erased_at"] is not None:
                await conn.execute("DELETE FROM mail_outbox WHERE mail_id = $1", row["mail_id"])
                continue
            try:
                await sender.send(row["message"].encode(), envelope_from, [row["to_addr"]])
            except PermanentMailError as exc:
                await conn.execute(
                    "UPDATE mail_outbox SET dead_at = now(), attempts = attempts + 1,"
                    " last_error = $2 WHERE mail_id = $1",
                    row["mail_id"],
                    str(exc)[:500],
                )
                log.warning("mail %s refused for good: %s", row["mail_id"], exc)
                continue
            except Exception as exc:
                delay = min(2.0 ** min(row["attempts"], 20), retry_max_s)
                error = f"{type(exc).__name__}: {exc}"[:500]
                await conn.execute(
                    "UPDATE mail_outbox SET attempts = attempts + 1, last_error = $2,"
                    " next_attempt_at = now() + make_interval(secs => $3) WHERE mail_id = $1",
                    row["mail_id"],
                    error,
                    delay,
                )
                return sent, error
            await conn.execute(
                "UPDATE mail_outbox SET sent_at = now(), attempts = attempts + 1,"
                " last_error = NULL WHERE mail_id = $1",
                row["mail_id"],
            )
            sent += 1
    return sent, None


# --- the consumer ---------------------------------------------------------------------


class UnknownEventVersion(ValueError):
    """An event of a version this consumer does not know: it goes to the dead-letter topic."""


class NotificationsConsumer(IdempotentConsumer):
    """Events -> rows in ``mail_outbox``, in the transaction of the processed id."""

    max_attempts = 3
    batch_max = 32

    def __init__(self, config: NotificationsConfig) -> None:
        self.config = config
        events = [*ACCOUNT_MAILS, *ORDER_MAILS, USER_ERASED.name]
        topics = sorted({topic_for(e, config.tenant, config.namespace) for e in events})
        super().__init__(name=config.name, topics=topics)
        # Set once a transaction that queued a mail has committed: wakes the send loop.
        self.queued = asyncio.Event()
        self._queued_in_transaction = False

    async def handle(self, pool: asyncpg.Pool, envelope: Envelope) -> bool:
        self._queued_in_transaction = False
        applied = await super().handle(pool, envelope)
        if self._queued_in_transaction:
            self.queued.set()
        return applied

    async def handle_batch(self, pool: asyncpg.Pool, envelopes: Sequence[Envelope]) -> int:
        self._queued_in_transaction = False
        applied = await super().handle_batch(pool, envelopes)
        if self._queued_in_transaction:
            self.queued.set()
        return applied

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        declared = EVENT_TYPES.get(envelope.type)
        if declared is not None and envelope.version != declared.version:
            raise UnknownEventVersion(f"{envelope.type} v{envelope.version}")
        if envelope.type == USER_ERASED.name:
            await conn.execute(
                "DELETE FROM mail_outbox WHERE user_id = $1", _user_id(envelope, required=True)
            )
            return
        kind = ACCOUNT_MAILS.get(envelope.type) or ORDER_MAILS.get(envelope.type)
        if kind is None:
            return
        order: dict[str, Any] | None = None
        user_id = _user_id(envelope, required=kind in ACCOUNT_MAILS.values())
        if envelope.type in ORDER_MAILS:
            order = await _order(conn, str(envelope.payload.get("order_id") or envelope.key))
            if order is None:
                return
            user_id = user_id or order["user_id"]
        user = await _user(conn, user_id) if user_id else None
        if user is None:
            return  # unknown or erased: nothing is sent
        locale = locale_of(user["preferences"], self.config.default_locale)
        rendered = render(kind, locale, name=user["name"], order=order)
        key = f"{envelope.id}:{kind}"
        message = build_message(self.config.mail_from, user["email"], rendered, key)
        if await queue_mail(
            conn, dedupe_key=key, kind=kind, user_id=user_id, to=user["email"], message=message
        ):
            self._queued_in_transaction = True


def _user_id(envelope: Envelope, *, required: bool) -> str | None:
    user_id = envelope.payload.get("user_id") or (envelope.key if required else None)
    if required and not isinstance(user_id, str):
        raise ValueError(f"{envelope.type} without a user id")
    return str(user_id) if user_id else None


async def _user(conn: asyncpg.Connection, user_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT email, name, preferences::text AS preferences FROM users"
        " WHERE user_id = $1 AND erased_at IS NULL",
        user_id,
    )
    if row is None:
        return None
    return {**dict(row), "preferences": json.loads(row["preferences"] or "{}")}


async def _order(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT user_id, status, data::text AS data FROM orders WHERE order_id = $1", order_id
    )
    if row is None:
        return None
    data = json.loads(row["data"])
    request = data.get("request") or {}
    address = request.get("shipping_address") or None
    if address and address.get("erased"):
        address = None
    payment = data.get("payment") or {}
    return {
        "id": order_id,
        "user_id": row["user_id"],
        "status": row["status"],
        "lines": data.get("lines") or [],
        "totals": data.get("totals") or {},
        "address": address,
        "method": request.get("shipping_method"),
        "pix": payment.get("pix") if row["status"] == "awaiting_payment" else None,
    }


# --- the host actor -------------------------------------------------------------------


class NotificationsHost:
    """Runs the consumer and the mail sender as two tasks; restarted with the actor."""

    def __init__(self, config: NotificationsConfig, sender: MailSender) -> None:
        self._config = config
        self._sender = sender
        self._consumer = NotificationsConsumer(config)
        self._pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sent_total = 0
        self._last_error: str | None = None
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            self._ensure_running()

    async def start(self) -> dict[str, Any]:
        self._ensure_running()
        await self._connect()
        return await self.health()

    async def health(self) -> dict[str, Any]:
        self._ensure_running()
        pending: int | None = None
        if self._pool is not None:
            try:
                pending = await asyncio.wait_for(
                    self._pool.fetchval(
                        "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND dead_at IS NULL"
                    ),
                    2,
                )
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
        return {
            "running": all(not t.done() for t in self._tasks) and bool(self._tasks),
            "sent_total": self._sent_total,
            "pending_mail": pending,
            "last_error": self._last_error,
            "pid": os.getpid(),
        }

    async def send_now(self) -> int:
        """Send whatever is due now (tests, ``agora down``); returns how many were sent."""
        await self._connect()
        assert self._pool is not None
        sent, error = await send_due(
            self._pool, self._sender, self._config.mail_from, self._config.retry_max_s
        )
        self._sent_total += sent
        self._last_error = error
        return sent

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
            loop.create_task(self._consume(), name="notifications-consume"),
            loop.create_task(self._send_loop(), name="notifications-send"),
        ]

    async def _connect(self) -> None:
        if self._pool is None:
            pool = await asyncpg.create_pool(dsn=self._config.database_url, min_size=1, max_size=3)
            if self._pool is None:
                self._pool = pool
            else:
                await pool.close()

    async def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                await self._connect()
                assert self._pool is not None
                await self._consumer.run(self._pool, self._config.pulsar_url, self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"consume: {type(exc).__name__}: {exc}"
                log.warning("notifications: %s", self._last_error)
                await asyncio.sleep(1)

    async def _send_loop(self) -> None:
        idle = self._config.poll_ms / 1000
        while not self._stop.is_set():
            # Cleared before the claim, never after: a mail committed while this pass
            # runs sets it again and the wait below returns at once (no lost wake-up).
            self._consumer.queued.clear()
            try:
                await self.send_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"send: {type(exc).__name__}: {exc}"
                log.warning("notifications: %s", self._last_error)
            try:
                await asyncio.wait_for(self._consumer.queued.wait(), timeout=idle)
            except TimeoutError:
                pass


NotificationsActor = ray.remote(max_restarts=-1, max_task_retries=0)(NotificationsHost)


def notifications_actor_name(index: int = 0) -> str:
    return f"agora:notifications:{index}"


def get_or_create_notifications(
    namespace: str, config: NotificationsConfig, sender: MailSender, index: int = 0
) -> Any:
    """The detached notifications actor ``index``, created if missing, started."""
    handle: Any = NotificationsActor.options(  # type: ignore[attr-defined]
        name=notifications_actor_name(index),
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(config, sender)
    handle.start.remote()
    return handle
