import uuid

from streams.events import CART_ITEM_ADDED, decode, encode, make_event, topic_for, uuid7


def test_uuid7_is_version_7_and_time_ordered():
    a = uuid7(1_000)
    b = uuid7(2_000)
    assert a.version == 7 and a.variant == uuid.RFC_4122
    assert a < b
    assert int(a) >> 80 == 1_000


def test_envelope_round_trips_and_topic_is_per_domain():
    event = make_event(CART_ITEM_ADDED, "cart-1", {"sku": "A"}, 1_000)
    assert decode(encode(event)) == event
    assert topic_for(event.type) == "persistent://agora/events/carts"
