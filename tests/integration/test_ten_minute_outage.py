"""The SMTP server or a webhook receiver away for 10 minutes: nothing lost, delivered after, once.

The real retry code (``send_due``, ``deliver_due``), the real SMTP and HTTP adapters and
a private PostgreSQL (pgserver); no running system. The outage is not waited out: the
clock is simulated. After each pass the row's ``next_attempt_at - now()`` (what the
code scheduled) is added to the simulated clock and the row is made due at once (for a
webhook its ``created_at`` moves back by the same wait, so the 24 h give-up sees the
simulated age). The server is away while the simulated clock is under 600 s: nothing
listens on its port (connection refused), as when the process is down; then a real
server is started on that port. So these tests check the schedule a 10-minute outage
meets, attempt by attempt, rather than one shortened outage.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from email import message_from_bytes, policy

import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from cluster.adapters.smtp import SmtpSender
from cluster.adapters.webhook_delivery import HttpPoster
from streams.consumers.notifications import queue_mail, send_due
from streams.consumers.webhooks import WebhooksConfig, deliver_due, verify_signature
from streams.events import ORDER_CONFIRMED, encode, make_event

pytestmark = pytest.mark.integration

OUTAGE_S = 600.0
MAIL_FROM = "Agora <no-reply@agora.test>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pool(private_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn=private_database, min_size=1, max_size=3)
    yield pool
    await pool.close()


class Inbox:
    def __init__(self) -> None:
        self.mails: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append(bytes(envelope.content))
        return "250 OK"


async def test_mail_waits_out_a_ten_minute_smtp_outage_and_is_sent_once(pool):
    await pool.execute(
        "INSERT INTO users (user_id, email, name, password_hash)"
        " VALUES ('u1', 'ana@x.test', 'Ana', 'x')"
    )
    async with pool.acquire() as conn:
        assert await queue_mail(
            conn,
            dedupe_key="evt-1:order_confirmed",
            kind="order_confirmed",
            user_id="u1",
            to="ana@x.test",
            message="Subject: Pedido confirmado\n\nobrigado\n",
        )
    port = _free_port()
    sender = SmtpSender(f"smtp://127.0.0.1:{port}", timeout_s=2)
    retry_max_s = 300.0  # AGORA_MAIL_RETRY_MAX_S's default
    inbox, controller = Inbox(), None
    clock, failures, delivered_at = 0.0, 0, None
    try:
        for _ in range(100):
            if clock >= OUTAGE_S and controller is None:
                controller = Controller(inbox, hostname="127.0.0.1", port=port)
                controller.start()
            sent, error = await send_due(pool, sender, MAIL_FROM, retry_max_s)
            row = await pool.fetchrow(
                "SELECT attempts, sent_at, dead_at, last_error,"
                " extract(epoch FROM next_attempt_at - now())::float8 AS wait FROM mail_outbox"
            )
            assert row["dead_at"] is None, "a transient outage must never park the mail"
            if sent:
                delivered_at = clock
                break
            assert clock < OUTAGE_S and error and row["last_error"], (clock, error)
            failures += 1
            assert 0 < row["wait"] <= retry_max_s + 1
            clock += row["wait"]
            await pool.execute("UPDATE mail_outbox SET next_attempt_at = now()")
        assert delivered_at is not None, "never delivered"
        # The first attempt after the server is back comes within one capped backoff.
        assert OUTAGE_S <= delivered_at <= OUTAGE_S + retry_max_s
        assert row["attempts"] == failures + 1 and failures >= 9  # 1+2+...+256 s, then 300 s
        assert await send_due(pool, sender, MAIL_FROM, retry_max_s) == (0, None)
        assert [message_from_bytes(m, policy=policy.default)["Subject"] for m in inbox.mails] == [
            "Pedido confirmado"
        ]
    finally:
        if controller is not None:
            controller.stop()


class Receiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _one_delivery(pool: asyncpg.Pool, port: int) -> str:
    event = make_event(ORDER_CONFIRMED, "o-1", {"order_id": "o-1"}, int(time.time() * 1000))
    await pool.execute(
        "INSERT INTO webhooks (webhook_id, url, events, secret, created_by)"
        " VALUES ('wh-1', $1, $2, 'secret-of-wh-1', 'test')",
        f"http://127.0.0.1:{port}/hook",
        [ORDER_CONFIRMED.name],
    )
    await pool.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body)"
        " VALUES ('wh-1', $1, $2, $3)",
        event.id,
        event.type,
        encode(event).decode(),
    )
    return event.id


async def _advance(pool: asyncpg.Pool) -> float:
    """Make the delivery due now, its first try older by the wait; returns the wait."""
    wait = await pool.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM webhook_deliveries"
    )
    await pool.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now(),"
        " created_at = created_at - make_interval(secs => $1)",
        wait,
    )
    return float(wait)


async def test_a_webhook_waits_out_a_ten_minute_receiver_outage_and_arrives_once(pool):
    port = _free_port()
    event_id = await _one_delivery(pool, port)
    config = WebhooksConfig("unused", "unused")  # 1 s doubling to 1 h, give up after 24 h
    poster = HttpPoster(allow_private=True)
    receiver = Receiver(port)
    clock, failures, delivered_at, started = 0.0, 0, None, False
    try:
        for _ in range(100):
            if clock >= OUTAGE_S and not started:
                await receiver.start()
                started = True
            delivered = await deliver_due(pool, poster, config)
            row = await pool.fetchrow("SELECT status, attempts, last_error FROM webhook_deliveries")
            if delivered:
                delivered_at = clock
                break
            assert clock < OUTAGE_S and row["status"] == "pending" and row["last_error"]
            failures += 1
            clock += await _advance(pool)
        assert delivered_at is not None, "never delivered"
        # Backoff 1, 2, 4 ... 512 s (+ up to 10 % jitter): back within one wait of the end.
        assert OUTAGE_S <= delivered_at <= OUTAGE_S + 512 * 1.1
        assert row["status"] == "delivered" and row["attempts"] == failures + 1
        assert failures >= 9
        assert await deliver_due(pool, poster, config) == 0
        [(headers, body)] = receiver.requests
        assert headers["Agora-Event-Id"] == event_id
        assert verify_signature(
            "secret-of-wh-1", body, headers["Agora-Signature"], int(time.time())
        )
    finally:
        await receiver.stop()


async def test_a_webhook_receiver_that_never_returns_is_dead_lettered_after_24_hours(pool):
    await _one_delivery(pool, _free_port())  # nothing ever listens there
    config = WebhooksConfig("unused", "unused")
    poster = HttpPoster(allow_private=True)
    clock, attempts = 0.0, 0
    for _ in range(200):
        assert await deliver_due(pool, poster, config) == 0
        attempts += 1
        status = await pool.fetchval("SELECT status FROM webhook_deliveries")
        if status == "dead":
            break
        assert status == "pending" and clock < 86_400
        clock += await _advance(pool)
    assert status == "dead"
    # Retried for the whole 24 h (the last wait is at most 1 h + 10 %), then given up.
    assert 86_400 <= clock <= 86_400 + 3_600 * 1.1
    assert 30 <= attempts <= 40  # 12 waits doubling up to 1 h, then about one an hour
