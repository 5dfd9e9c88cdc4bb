"""streams/ in this process against the real PostgreSQL and Pulsar (and a real SMTP and HTTP
receiver): the outbox relay, the follower, the consumer base and the three consumer hosts.

In the running system this code runs inside Ray actors, where coverage does not reach
(docs/DECISIONS.md, "Coverage gate"); here the same classes run in the test process, on a
database of their own (created on the system's PostgreSQL server, migrated, dropped at the
end) so the system's own relay and consumers never see these rows, and on topics and a
namespace of their own on the system's Pulsar.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from email import message_from_bytes, policy
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pulsar
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from cluster.adapters.smtp import SmtpSender
from cluster.adapters.webhook_delivery import HttpPoster
from cluster.db import migrate
from serve import ops_metrics
from streams.consumer import IdempotentConsumer, dead_letter_topic
from streams.consumers.host import ConsumerHost, HostConfig
from streams.consumers.notifications import (
    NotificationsConfig,
    NotificationsHost,
    message_id,
    queue_mail,
    send_due,
)
from streams.consumers.webhooks import (
    WebhooksConfig,
    WebhooksHost,
    deliver_due,
    verify_signature,
)
from streams.events import (
    CART_ITEM_ADDED,
    ORDER_CONFIRMED,
    ORDER_SHIPPED,
    USER_ERASED,
    USER_REGISTERED,
    Envelope,
    EventType,
    decode,
    encode,
    make_event,
    topic_for,
)
from streams.follow import Follower
from streams.outbox import OutboxPublishError, OutboxRelay, RelayConfig, publish_pending
from tests.conftest import eventually

pytestmark = pytest.mark.integration

# Nothing listens here: connections are refused at once.
DEAD_DATABASE = "postgresql://postgres@127.0.0.1:9/none"


def _run() -> str:
    return uuid.uuid4().hex[:10]


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event(kind: EventType, key: str, payload: dict | None = None) -> Envelope:
    return make_event(kind, key, payload or {}, int(time.time() * 1000))


@pytest.fixture(scope="module")
async def scratch_db(services) -> str:
    """A fresh, migrated database on the system's PostgreSQL server (dropped afterwards)."""
    name = f"agora_streams_{_run()}"
    admin = await asyncpg.connect(services.database)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(services.database, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield url
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="module")
async def pool(scratch_db: str):
    pool = await asyncpg.create_pool(dsn=scratch_db, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def client(pulsar_url: str) -> Iterator[pulsar.Client]:
    client = pulsar.Client(pulsar_url, operation_timeout_seconds=10)
    yield client
    client.close()


def _publish(client: pulsar.Client, topic: str, messages: Sequence[Envelope | bytes]) -> None:
    producer = client.create_producer(topic)
    try:
        for message in messages:
            if isinstance(message, bytes):
                producer.send(message, partition_key="garbage")
            else:
                producer.send(
                    encode(message), partition_key=message.key, properties={"type": message.type}
                )
    finally:
        producer.close()


def _read_all(client: pulsar.Client, topic: str, expected: int) -> list[pulsar.Message]:
    """Everything on ``topic`` from the start, waiting up to 10 s for ``expected`` messages."""
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    got: list[pulsar.Message] = []
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            try:
                got.append(reader.read_next(timeout_millis=200))
            except pulsar.Timeout:
                if len(got) >= expected:
                    break
    finally:
        reader.close()
    return got


async def _in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def _enqueue(pool: asyncpg.Pool, rows: Sequence[tuple[str, Envelope]]) -> None:
    await pool.executemany(
        "INSERT INTO outbox (event_id, topic, key, type, envelope) VALUES ($1, $2, $3, $4, $5)",
        [(e.id, topic, e.key, e.type, encode(e).decode()) for topic, e in rows],
    )


# --- the outbox relay -------------------------------------------------------------------


async def test_the_relay_publishes_every_row_once_per_key_in_order_and_marks_it_sent(
    pool, scratch_db, pulsar_url, client
):
    run = _run()
    topics = [f"persistent://agora/events/test-relay-{run}-{i}" for i in range(2)]
    rows = [(topics[i % 2], _event(CART_ITEM_ADDED, f"cart-{i % 3}", {"n": i})) for i in range(120)]
    await _enqueue(pool, rows)
    relay = OutboxRelay(RelayConfig(scratch_db, pulsar_url, poll_ms=10, batch_size=25))
    try:
        health = await relay.start()
        assert health["running"] and health["last_error"] is None
        await relay.drain(timeout_s=30)
        health = await relay.health()
        assert health["pending"] == 0 and health["sent_total"] == len(rows)
    finally:
        await relay.stop()
    unsent = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = ANY($1) AND sent_at IS NULL", topics
    )
    assert unsent == 0
    for topic in topics:
        wanted = [e for t, e in rows if t == topic]
        messages = await _in_thread(_read_all, client, topic, len(wanted))
        assert sorted(m.properties()["event_id"] for m in messages) == sorted(e.id for e in wanted)
        for key in {e.key for e in wanted}:
            seen = [decode(m.data()).id for m in messages if m.partition_key() == key]
            assert seen == [e.id for e in wanted if e.key == key]
        assert {m.properties()["type"] for m in messages} == {CART_ITEM_ADDED.name}
        # The event time is the UUIDv7's millisecond, not the publish time.
        first = decode(messages[0].data())
        assert messages[0].event_timestamp() == uuid.UUID(first.id).int >> 80


async def test_rows_of_a_topic_pulsar_refuses_stay_unsent_and_the_rest_is_sent(
    pool, pulsar_url, client
):
    run = _run()
    good = f"persistent://agora/events/test-refused-{run}"
    bad = f"bogus://test-{run}/no/such"  # a name the Pulsar client refuses
    rows = [(good, _event(CART_ITEM_ADDED, "k")), (bad, _event(CART_ITEM_ADDED, "k"))]
    await _enqueue(pool, rows)
    producers: dict[str, pulsar.Producer] = {}

    async def producer_for(topic: str) -> pulsar.Producer:
        if topic not in producers:
            producers[topic] = await _in_thread(client.create_producer, topic)
        return producers[topic]

    try:
        with pytest.raises(OutboxPublishError) as refused:
            # Other tests' rows may be in the table too: a batch big enough for all of them.
            await publish_pending(pool, producer_for, 10_000)
    finally:
        for producer in producers.values():
            producer.close()
    assert refused.value.failed == 1 and f"producer for {bad}" in str(refused.value)
    state = dict(
        await pool.fetch(
            "SELECT topic, sent_at IS NOT NULL FROM outbox WHERE topic = ANY($1)", [good, bad]
        )
    )
    assert state == {good: True, bad: False}
    # Cleared, so the next test's relay does not fail on this row again.
    await pool.execute("DELETE FROM outbox WHERE topic = $1", bad)


async def test_a_relay_whose_database_is_away_reports_it_and_keeps_trying(pulsar_url):
    relay = OutboxRelay(RelayConfig(DEAD_DATABASE, pulsar_url, poll_ms=10))
    try:
        with pytest.raises(OSError):
            await relay.start()
        await asyncio.sleep(0.1)
        health = await relay.health()
        assert health["running"] and health["pending"] is None
        assert "Error" in (health["last_error"] or "")
    finally:
        await relay.stop()
    assert not (await relay.health())["running"]  # stopped stays stopped


# --- the follower ----------------------------------------------------------------------


async def test_the_follower_sees_what_is_published_after_it_connected_and_flags_garbage(
    pulsar_url, client
):
    run = _run()
    topics = [f"persistent://agora/events/test-follow-{run}-{i}" for i in range(2)]
    before = _event(CART_ITEM_ADDED, "k")
    await _in_thread(_publish, client, topics[0], [before])
    loop = asyncio.get_running_loop()
    events: list[Envelope] = []
    gaps: list[int] = []
    follower = Follower(pulsar_url, topics, events.append, lambda: gaps.append(1), loop)
    follower.start()
    follower.start()  # a second start changes nothing
    try:
        assert await _in_thread(follower.wait_connected, 15.0)
        after = [_event(CART_ITEM_ADDED, "k", {"i": i}) for i in range(2)]
        await _in_thread(_publish, client, topics[0], [after[0], b"{not json"])
        await _in_thread(_publish, client, topics[1], [after[1]])

        async def seen() -> bool:
            return len(events) == 2 and len(gaps) == 1

        await eventually(seen, timeout=15)
    finally:
        await _in_thread(follower.stop)
    assert {e.id for e in events} == {e.id for e in after}  # nothing from before it connected
    assert follower.received == 2 and follower.gaps == 1


# --- the consumer base -----------------------------------------------------------------


class Recorder(IdempotentConsumer):
    """Records each event it applies (the base records its id in ``processed_events``); the
    payload's ``mode`` makes it refuse (a poison event) or fail transiently three times."""

    max_attempts = 2
    retry_backoff_s = 0.01
    resubscribe_idle_s = 0.6

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        super().__init__(name, topics)
        self.applied: list[str] = []
        self.attempts: collections.Counter[str] = collections.Counter()
        self.ticks = 0

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        self.attempts[envelope.id] += 1
        mode = envelope.payload.get("mode")
        if mode == "refuse":
            raise ValueError("refused by the test")
        if mode == "flaky" and self.attempts[envelope.id] <= 3:
            raise ConnectionResetError("the database went away")
        self.applied.append(envelope.id)

    async def tick(self, pool: asyncpg.Pool) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("a failing tick is logged, consumption goes on")


async def _processed(pool: asyncpg.Pool, consumer: str) -> set[str]:
    rows = await pool.fetch("SELECT event_id FROM processed_events WHERE consumer = $1", consumer)
    return {str(r["event_id"]) for r in rows}


async def test_the_consumer_applies_once_retries_blips_and_dead_letters_poison(
    pool, pulsar_url, client
):
    run = _run()
    topic = f"persistent://agora/events/test-consume-{run}"
    name = f"test-consumer-{run}"
    ok = _event(CART_ITEM_ADDED, "k", {"mode": "ok"})
    flaky = _event(CART_ITEM_ADDED, "k", {"mode": "flaky"})
    poison = _event(CART_ITEM_ADDED, "k", {"mode": "refuse"})
    consumer = Recorder(name, [topic])
    stop = asyncio.Event()
    await _in_thread(_publish, client, topic, [ok, ok, b"{not json", flaky, poison])
    task = asyncio.create_task(consumer.run(pool, pulsar_url, stop))
    try:

        async def settled() -> bool:  # applied and committed (apply runs before the commit)
            return (
                consumer.applied == [ok.id, flaky.id]
                and consumer.attempts[poison.id] == 2
                and len(await _processed(pool, name)) == 2
            )

        await eventually(settled, timeout=20)
        assert consumer.attempts[flaky.id] == 4  # transient: past max_attempts, not dead
        dead = await _in_thread(_read_all, client, dead_letter_topic(topic, name), 2)
        reasons = {m.properties()["DLQ_REASON"].split(":")[0]: m for m in dead}
        assert set(reasons) == {"undecodable", "apply failed 2 times"}
        assert reasons["undecodable"].data() == b"{not json"
        assert decode(reasons["apply failed 2 times"].data()).id == poison.id
        assert {m.properties()["REAL_TOPIC"] for m in dead} == {topic}
        assert await _processed(pool, name) == {ok.id, flaky.id}  # the refusal rolled back
        # Each dead letter is recorded (before its acknowledgement) and counted in /metrics.
        query = "SELECT topic, event_id, reason FROM dead_letters WHERE consumer = $1 ORDER BY id"

        async def both_recorded() -> bool:
            return len(await pool.fetch(query, name)) == 2

        await eventually(both_recorded, timeout=10)
        recorded = await pool.fetch(query, name)
        assert [(r["topic"], r["event_id"], r["reason"].split(":")[0]) for r in recorded] == [
            (topic, None, "undecodable"),
            (topic, poison.id, "apply failed 2 times"),
        ]
        async with pool.acquire() as conn:
            await ops_metrics.refresh_dead_letters(conn)
        assert REGISTRY.get_sample_value("agora_events_dead_lettered", {"consumer": name}) == 2
        # Idle past resubscribe_idle_s: it closes and subscribes again, and still consumes.
        await asyncio.sleep(consumer.resubscribe_idle_s * 2)
        late = _event(CART_ITEM_ADDED, "k2", {"mode": "ok"})
        await _in_thread(_publish, client, topic, [late])

        async def late_applied() -> bool:
            return consumer.applied[-1:] == [late.id]

        await eventually(late_applied, timeout=15)
        assert consumer.ticks > 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    assert consumer.applied == [ok.id, flaky.id, late.id]


async def test_the_consumer_host_runs_its_consumer_until_stopped(
    pool, scratch_db, pulsar_url, client
):
    run = _run()
    topic = f"persistent://agora/events/test-host-{run}"
    consumer = Recorder(f"test-host-{run}", [topic])
    host = ConsumerHost(HostConfig(scratch_db, pulsar_url), consumer)
    events = [_event(CART_ITEM_ADDED, f"k{i}") for i in range(3)]
    try:
        health = await host.start()
        assert health["running"] and health["consumer"] == consumer.name
        await _in_thread(_publish, client, topic, events)

        async def applied() -> bool:
            return await _processed(pool, consumer.name) == {e.id for e in events}

        await eventually(applied, timeout=20)
        assert sorted(consumer.applied) == sorted(e.id for e in events)
    finally:
        await host.stop()
    assert not (await host.health())["running"]


async def test_a_consumer_host_without_its_database_reports_the_error(pulsar_url):
    consumer = Recorder(f"test-host-{_run()}", ["persistent://agora/events/test-host-dead"])
    host = ConsumerHost(HostConfig(DEAD_DATABASE, pulsar_url), consumer)
    try:
        await host.start()

        async def reported() -> bool:
            return (await host.health())["last_error"] is not None

        await eventually(reported, timeout=10)
        assert (await host.health())["running"]  # it keeps trying
    finally:
        await host.stop()


# --- notifications ---------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler: keeps what it accepts, refuses ``bounce@`` recipients for good."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def to(self, address: str):
        return [
            message_from_bytes(content, policy=policy.default)
            for rcpts, content in self.mails
            if address in rcpts
        ]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, Controller]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield inbox, controller
    controller.stop()


async def _user(pool, email: str, *, locale: str = "en", erased: bool = False) -> str:
    user_id = f"u-{_run()}"
    await pool.execute(
        "INSERT INTO users (user_id, email, name, password_hash, preferences, erased_at)"
        " VALUES ($1, $2, 'Ana', 'x', $3::jsonb, CASE WHEN $4 THEN now() END)",
        user_id,
        email,
        json.dumps({"locale": locale}),
        erased,
    )
    return user_id


async def _order(pool, user_id: str) -> str:
    order_id = f"o-{_run()}"
    data = {
        "lines": [
            {
                "sku": "SKU-1",
                "name": "Caneca",
                "quantity": 2,
                "unit_price": 2500,
                "line_total": 5000,
            }
        ],
        "totals": {
            "subtotal": 5000,
            "shipping": 1000,
            "tax": 0,
            "discount_total": 0,
            "total": 6000,
        },
        "request": {"shipping_method": "standard", "shipping_address": {"erased": True}},
    }
    await pool.execute(
        "INSERT INTO orders (order_id, user_id, status, step, data, version)"
        " VALUES ($1, $2, 'confirmed', 'done', $3::jsonb, 1)",
        order_id,
        user_id,
        json.dumps(data),
    )
    return order_id


async def test_notifications_mail_each_event_once_and_honour_erasure_and_refusals(
    pool, scratch_db, pulsar_url, client, smtp
):
    inbox, controller = smtp
    run = _run()
    config = NotificationsConfig(
        scratch_db,
        pulsar_url,
        mail_from="Agora <no-reply@agora.test>",
        namespace=f"notify-{run}",
        poll_ms=50,
        name=f"notifications-{run}",
    )
    ana = await _user(pool, f"ana-{run}@example.com")
    gone = await _user(pool, f"gone-{run}@example.com", erased=True)
    bounce = await _user(pool, f"bounce@{run}.example.com", locale="pt-BR")
    order = await _order(pool, ana)
    welcome = _event(USER_REGISTERED, ana, {"user_id": ana})
    confirmed = _event(ORDER_CONFIRMED, order, {"order_id": order})
    unknown = _event(USER_REGISTERED, gone, {"user_id": gone})
    refused = _event(USER_REGISTERED, bounce, {"user_id": bounce})
    newer = msgspec.structs.replace(welcome, id=str(uuid.uuid4()), version=99)
    host = NotificationsHost(config, SmtpSender(f"smtp://127.0.0.1:{controller.port}"))
    try:
        await host.start()
        users = topic_for(USER_REGISTERED.name, "agora", config.namespace)
        orders = topic_for(ORDER_CONFIRMED.name, "agora", config.namespace)
        await _in_thread(_publish, client, users, [welcome, welcome, unknown, refused, newer])
        await _in_thread(_publish, client, orders, [confirmed])

        async def delivered() -> bool:
            return len(inbox.to(ana_email(run))) == 2

        await eventually(delivered, timeout=30)
        mails = {m["Message-ID"]: m for m in inbox.to(ana_email(run))}
        assert set(mails) == {
            message_id(f"{welcome.id}:welcome"),
            message_id(f"{confirmed.id}:order_confirmed"),
        }
        order_mail = mails[message_id(f"{confirmed.id}:order_confirmed")]
        assert order in order_mail.get_body(("plain",)).get_content()
        assert "R$60.00" in order_mail.get_body(("plain",)).get_content()  # en locale

        async def bounced() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT dead_at IS NOT NULL FROM mail_outbox WHERE user_id = $1", bounce
                )
            )

        await eventually(bounced, timeout=15)
        assert "550" in await pool.fetchval(
            "SELECT last_error FROM mail_outbox WHERE user_id = $1", bounce
        )
        assert not await pool.fetchval("SELECT count(*) FROM mail_outbox WHERE user_id = $1", gone)
        dead = await _in_thread(_read_all, client, dead_letter_topic(users, config.name), 1)
        assert [decode(m.data()).id for m in dead] == [newer.id]
        health = await host.health()
        assert health["running"] and health["sent_total"] >= 2 and health["pending_mail"] == 0

        # The account is erased: its mail rows go.
        erasures = topic_for(USER_ERASED.name, "agora", config.namespace)
        await _in_thread(_publish, client, erasures, [_event(USER_ERASED, ana, {"user_id": ana})])

        async def forgotten() -> bool:
            return not await pool.fetchval(
                "SELECT count(*) FROM mail_outbox WHERE user_id = $1", ana
            )

        await eventually(forgotten, timeout=20)
    finally:
        await host.stop()
    assert len(inbox.to(ana_email(run))) == 2  # the duplicate event sent nothing
    assert not (await host.health())["running"]


def ana_email(run: str) -> str:
    return f"ana-{run}@example.com"


async def test_queued_mail_waits_out_a_dead_server_and_an_erased_users_mail_is_dropped(pool, smtp):
    inbox, controller = smtp
    run = _run()
    sleepy = await _user(pool, f"sleepy-{run}@example.com")
    erased = await _user(pool, f"erased-{run}@example.com")
    async with pool.acquire() as conn:
        for user_id, kind in ((sleepy, "welcome"), (erased, "welcome")):
            assert await queue_mail(
                conn,
                dedupe_key=f"{run}:{user_id}",
                kind=kind,
                user_id=user_id,
                to=f"{'sleepy' if user_id == sleepy else 'erased'}-{run}@example.com",
                message=f"Subject: hi\n\nhello {run}\n",
            )
        assert not await queue_mail(  # the same dedupe key again: not queued twice
            conn, dedupe_key=f"{run}:{sleepy}", kind="welcome", user_id=sleepy, to="x", message="x"
        )
    await pool.execute("UPDATE users SET erased_at = now() WHERE user_id = $1", erased)
    away = SmtpSender(f"smtp://127.0.0.1:{_free_port()}", timeout_s=2)
    # Other tests' mail in this database is long sent; only these two are due.
    sent, error = await send_due(pool, away, "no-reply@agora.test", retry_max_s=1)
    assert sent == 0 and error and "Refused" in error
    row = await pool.fetchrow(
        "SELECT attempts, sent_at, next_attempt_at > now() AS later FROM mail_outbox"
        " WHERE user_id = $1",
        sleepy,
    )
    assert (row["attempts"], row["sent_at"], row["later"]) == (1, None, True)
    live = SmtpSender(f"smtp://127.0.0.1:{controller.port}")
    # Not due yet; the erased user's mail is deleted unsent.
    assert await send_due(pool, live, "no-reply@agora.test") == (0, None)
    await asyncio.sleep(1.1)  # retry_max_s caps the backoff at 1 s
    assert await send_due(pool, live, "Agora <no-reply@agora.test>") == (1, None)
    assert [m["Subject"] for m in inbox.to(f"sleepy-{run}@example.com")] == ["hi"]
    assert inbox.to(f"erased-{run}@example.com") == []
    assert not await pool.fetchval("SELECT count(*) FROM mail_outbox WHERE user_id = $1", erased)


# --- webhooks --------------------------------------------------------------------------


class Receiver:
    """A real HTTP endpoint: ``/ok`` answers 200 and keeps the request, ``/down`` 503."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _ok(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status=200)

    async def _down(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status=503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ok", self._ok)
        app.router.add_post("/down", self._down)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = _free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def receiver():
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


async def _webhook(pool, url: str, events: list[str], *, deleted: bool = False) -> str:
    webhook_id = f"wh-{_run()}"
    await pool.execute(
        "INSERT INTO webhooks (webhook_id, url, events, secret, created_by, deleted_at)"
        " VALUES ($1, $2, $3, $4, 'test', CASE WHEN $5 THEN now() END)",
        webhook_id,
        url,
        events,
        f"secret-{webhook_id}",
        deleted,
    )
    return webhook_id


async def _deliveries(pool, event_id: str) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT webhook_id, status, attempts, last_status, last_error,"
        " next_attempt_at - now() AS wait FROM webhook_deliveries WHERE event_id = $1",
        event_id,
    )
    return {r["webhook_id"]: r for r in rows}


async def test_webhooks_sign_and_deliver_each_event_once_and_back_off_on_failure(
    pool, scratch_db, pulsar_url, client, receiver
):
    run = _run()
    config = WebhooksConfig(
        scratch_db,
        pulsar_url,
        namespace=f"hooks-{run}",
        base_backoff_s=60,
        poll_ms=50,
        name=f"webhooks-{run}",
    )
    confirmed_only = [ORDER_CONFIRMED.name]
    ok = await _webhook(pool, receiver.url("/ok"), confirmed_only)
    down = await _webhook(pool, receiver.url("/down"), confirmed_only)
    other = await _webhook(pool, receiver.url("/ok"), [ORDER_SHIPPED.name])
    deleted = await _webhook(pool, receiver.url("/ok"), confirmed_only, deleted=True)
    event = _event(ORDER_CONFIRMED, f"o-{run}", {"order_id": f"o-{run}"})
    host = WebhooksHost(config, HttpPoster(allow_private=True))
    try:
        assert (await host.start())["running"]
        topic = topic_for(ORDER_CONFIRMED.name, "agora", config.namespace)
        await _in_thread(_publish, client, topic, [event, event])

        async def tried_both() -> bool:
            rows = await _deliveries(pool, event.id)
            return rows.keys() == {ok, down} and all(r["attempts"] == 1 for r in rows.values())

        await eventually(tried_both, timeout=30)
        rows = await _deliveries(pool, event.id)
        assert rows[ok]["status"] == "delivered" and rows[ok]["last_status"] == 200
        assert rows[down]["status"] == "pending" and rows[down]["last_status"] == 503
        assert rows[down]["wait"].total_seconds() > 50  # backed off by ~base_backoff_s
        assert other not in rows and deleted not in rows
        [(_path, headers, body)] = [r for r in receiver.requests if r[0] == "/ok"]
        assert decode(body).id == event.id
        assert headers["Agora-Event-Id"] == event.id
        assert headers["Agora-Event-Type"] == ORDER_CONFIRMED.name
        assert verify_signature(f"secret-{ok}", body, headers["Agora-Signature"], int(time.time()))
        assert not verify_signature("wrong", body, headers["Agora-Signature"], int(time.time()))
        assert (await host.health())["delivered_total"] == 1
    finally:
        await host.stop()
    assert len(receiver.requests) == 2  # the duplicate event posted nothing more


async def test_deliveries_of_a_deleted_webhook_die_and_old_failures_give_up(
    pool, pulsar_url, receiver
):
    run = _run()
    gone = await _webhook(pool, receiver.url("/ok"), [ORDER_CONFIRMED.name])
    failing = await _webhook(pool, receiver.url("/down"), [ORDER_CONFIRMED.name])
    sealed = await _webhook(pool, receiver.url("/ok"), [ORDER_CONFIRMED.name])
    event = _event(ORDER_CONFIRMED, f"o-{run}")
    await pool.executemany(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, created_at)"
        " VALUES ($1, $2, $3, $4, now() - interval '2 hours')",
        [(w, event.id, event.type, encode(event).decode()) for w in (gone, failing, sealed)],
    )
    await pool.execute("UPDATE webhooks SET deleted_at = now() WHERE webhook_id = $1", gone)

    def opener(stored: str, webhook_id: str) -> str:
        if webhook_id == sealed:
            raise KeyError("no key for this secret")
        return stored

    config = WebhooksConfig("unused", pulsar_url, give_up_after_s=3600)
    assert await deliver_due(pool, HttpPoster(allow_private=True), config, 100, opener) == 0
    rows = await _deliveries(pool, event.id)
    assert (rows[gone]["status"], rows[gone]["last_error"]) == ("dead", "webhook deleted")
    assert rows[failing]["status"] == "dead" and rows[failing]["last_status"] == 503
    assert rows[sealed]["status"] == "dead" and rows[sealed]["last_error"] == "secret: KeyError"
    # Only the failing one reached the receiver: never a post for a deleted or unsigned hook.
    assert [r[0] for r in receiver.requests] == ["/down"]
