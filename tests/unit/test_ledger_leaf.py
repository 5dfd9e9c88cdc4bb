"""An order.confirmed event from the order model becomes the order's canonical leaf."""

from __future__ import annotations

import pytest

from actors.order.model import Order
from ledger.actor import LedgerConfig, OrderConfirmedFeed, order_leaf
from ledger.merkle import leaf_hash
from streams.events import ORDER_CREATED, make_event


def confirmed_order(currency: str = "BRL") -> Order:
    order = Order("0190c0de-0000-7000-8000-000000000001")
    order.create("u1", "h", {"shipping_address": {"country": "BR"}}, "user:u1", 1_000)
    order.priced([{"sku": "A", "quantity": 1}], {"total": 12_990, "currency": currency}, 1_001)
    order.screened(10, "pass", [], 1_002)
    order.reserved({"A": "o1:A"}, 1_003)
    order.charged({"payment_id": "pi_1", "status": "succeeded"}, 1_004)
    return order


def test_the_confirmed_event_names_total_currency_payment_and_time() -> None:
    (event,) = confirmed_order("USD").confirmed(1_733_281_200_123)
    assert event.payload["currency"] == "USD" and event.payload["payment_id"] == "pi_1"
    data = order_leaf(event)
    assert data == (
        "agora.order.v1|order_id=0190c0de-0000-7000-8000-000000000001|total=12990 USD"
        "|payment_id=pi_1|confirmed_at=2024-12-04T03:00:00.123Z"
    )
    assert len(leaf_hash(data)) == 32
    # A redelivery of the same event gives the same leaf (the feed records it once).
    assert order_leaf(event) == data


def test_an_event_without_a_total_is_refused() -> None:
    event = make_event(ORDER_CREATED, "o1", {"order_id": "o1"}, 1_000)
    with pytest.raises(KeyError):
        order_leaf(event)


async def test_the_feed_skips_other_order_events_without_touching_the_database() -> None:
    feed = OrderConfirmedFeed("persistent://agora/events/orders")
    assert feed.name == "ledger" and feed.topics == ["persistent://agora/events/orders"]
    created = make_event(ORDER_CREATED, "o1", {"order_id": "o1", "total": 1}, 1_000)
    assert await feed.handle(None, created) is False  # type: ignore[arg-type]
    # Several waiting together (``batch_max``): the same, none of them is claimed.
    assert feed.batch_max > 1
    assert await feed.handle_batch(None, [created, created]) == 0  # type: ignore[arg-type]


def test_the_key_never_shows_in_the_config_repr() -> None:
    config = LedgerConfig("postgresql://x", "pulsar://x", "t", "http://x", private_key="0xsecret")
    assert "0xsecret" not in repr(config)
