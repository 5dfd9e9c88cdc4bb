"""Webhook signatures, backoff and the SSRF guard (no network: literal addresses only)."""

import contextlib
import hashlib
import hmac

import pytest

from cluster.adapters.webhook_delivery import refusal
from streams.consumers.webhooks import (
    WebhookConsumer,
    WebhooksConfig,
    backoff_s,
    signature_header,
    subscribable_events,
    verify_signature,
)
from streams.events import CART_CLEARED, ORDER_CONFIRMED, PAYMENT_PROCESSED, make_event

SECRET = "whsec_0123456789abcdef"
BODY = b'{"id":"e1","type":"order.confirmed"}'


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = signature_header(SECRET, BODY, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(SECRET, BODY, header, now=1_700_000_010)


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        ("another-secret-value", BODY, 1_700_000_000),
        (SECRET, BODY + b" ", 1_700_000_000),
        (SECRET, BODY, 1_700_000_000 + 301),  # outside the replay window
        (SECRET, BODY, 1_700_000_000 - 301),
    ],
)
def test_a_wrong_secret_body_or_stale_timestamp_fails(secret, body, now) -> None:
    header = signature_header(SECRET, BODY, 1_700_000_000)
    assert not verify_signature(secret, body, header, now=now)


@pytest.mark.parametrize("header", ["", "t=x,v1=00", "v1=00", "t=1700000000", "garbage"])
def test_malformed_signature_headers_fail(header) -> None:
    assert not verify_signature(SECRET, BODY, header, now=1_700_000_000)


def test_backoff_doubles_and_is_capped() -> None:
    config = WebhooksConfig("db", "pulsar", base_backoff_s=1.0, max_backoff_s=3600.0)
    delays = [backoff_s(n, config) for n in range(15)]
    assert 1.0 <= delays[0] <= 1.1 and 2.0 <= delays[1] <= 2.2 and 8 <= delays[3] <= 8.8
    assert all(3600 <= d <= 3960 for d in delays[12:])
    # Retries for 24 h take about 35 attempts at these settings: bounded, not a hot loop.
    total, attempts = 0.0, 0
    while total < 86_400:
        total += backoff_s(attempts, config)
        attempts += 1
    assert 20 < attempts < 40


def test_only_commerce_events_can_be_subscribed() -> None:
    events = subscribable_events()
    assert "order.confirmed" in events and "inventory.changed" in events
    assert not [e for e in events if e.startswith(("auth.", "user.", "admin."))]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://[fc00::1]/hook",
        "http://224.0.0.1/hook",
    ],
)
async def test_private_and_loopback_targets_are_refused(url) -> None:
    assert await refusal(url, allow_private=False) is not None
    assert await refusal(url, allow_private=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://user:pw@8.8.8.8/x",
        "http:///nohost",
        "http://[::1",
        "http://example.com:99999/x",
        "javascript:alert(1)",
        "http://" + "a" * 2100 + ".com/",
    ],
)
async def test_bad_urls_are_refused_even_when_private_is_allowed(url) -> None:
    assert await refusal(url, allow_private=True) is not None


async def test_a_public_literal_address_is_accepted() -> None:
    assert await refusal("https://8.8.8.8/hook", allow_private=False) is None


class _BatchConn:
    """What ``handle_batch`` asks of a connection: a transaction, the claim, the inserts."""

    def __init__(self, seen: set) -> None:
        self.seen, self.transactions, self.inserted = seen, 0, []

    def transaction(self):
        self.transactions += 1
        return contextlib.nullcontext()

    def add_query_logger(self, _logger) -> None:
        pass

    async def fetch(self, sql, consumer, ids):
        assert "processed_events" in sql and consumer == "webhooks"
        fresh = [i for i in ids if i not in self.seen]
        self.seen.update(fresh)
        return [{"event_id": i} for i in fresh]

    async def execute(self, sql, event_id, event_type, body):
        assert "webhook_deliveries" in sql
        self.inserted.append(event_type)


class _BatchPool:
    def __init__(self, conn: _BatchConn) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self.conn


async def test_events_waiting_together_are_recorded_in_one_transaction_and_wake_delivery():
    consumer = WebhookConsumer(WebhooksConfig("db", "pulsar"))
    assert consumer.batch_max > 1
    conn = _BatchConn(set())
    order = make_event(ORDER_CONFIRMED, "o1", {"order_id": "o1"}, 1)
    cart = make_event(CART_CLEARED, "c1", {"cart_id": "c1"}, 1)
    payment = make_event(PAYMENT_PROCESSED, "o1", {"order_id": "o1"}, 1)
    assert await consumer.handle_batch(_BatchPool(conn), [order, cart, payment]) == 3
    assert conn.transactions == 1 and conn.inserted == ["order.confirmed", "payment.processed"]
    assert consumer.queued.is_set()  # the delivery loop looks at once
    consumer.queued.clear()
    # A redelivered batch adds nothing and wakes nobody.
    assert await consumer.handle_batch(_BatchPool(conn), [order, payment]) == 0
    assert conn.inserted == ["order.confirmed", "payment.processed"]
    assert not consumer.queued.is_set()
