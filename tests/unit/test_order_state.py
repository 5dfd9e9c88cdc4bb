import pytest

from actors.fraud.rules import FraudFacts, screen
from actors.order.model import Order, order_id_for
from serve.routers.checkout import carries_card_number


def new_order():
    order = Order("o1")
    order.create("u1", "h", {"shipping_address": {"country": "BR"}}, "user:u1", 1_000)
    return order


def test_order_id_is_per_user_and_key():
    assert order_id_for("u1", "k") == order_id_for("u1", "k")
    assert order_id_for("u1", "k") != order_id_for("u2", "k")
    assert order_id_for("u1", "k") != order_id_for("u1", "k2")


def test_happy_path_history_and_events():
    order = new_order()
    order.priced([{"sku": "A", "quantity": 1}], {"total": 1000}, 1_001)
    assert order.screened(10, "pass", [], 1_002) == []
    order.reserved({"A": "o1:A"}, 1_003)
    paid = order.charged({"payment_id": "pi_1", "status": "succeeded"}, 1_004)
    assert [e.type for e in paid] == ["payment.processed"]
    done = order.confirmed(1_005)
    assert [e.type for e in done] == ["order.confirmed"]
    assert order.status == "confirmed" and order.step == "done"
    assert [h["status"] for h in order.history] == ["pending", "confirmed"]


def test_review_holds_the_order():
    order = new_order()
    order.priced([], {"total": 1}, 2)
    events = order.screened(60, "review", ["new-account"], 3)
    assert order.status == "pending_review" and [e.type for e in events] == ["order.pending_review"]


def test_failure_keeps_reason_and_drops_reservations():
    order = new_order()
    order.reservations = {"A": "r"}
    events = order.failed("out-of-stock", "short", 5, lines=[{"sku": "A"}])
    assert order.status == "failed" and order.reservations == {}
    assert order.failure["lines"] == [{"sku": "A"}]
    assert [e.type for e in events] == ["order.failed"]


def test_doc_round_trip():
    order = new_order()
    order.priced([{"sku": "A", "quantity": 2}], {"total": 10}, 3)
    again = Order.from_doc("o1", order.to_doc(), order.version)
    assert again.view() == order.view()


def test_view_never_shows_the_payment_token():
    order = new_order()
    order.request["payment"] = {"method": "card", "token": "pm_card_visa"}
    assert "pm_card_visa" not in str(order.view())


@pytest.mark.parametrize(
    ("facts", "decision"),
    [
        (FraudFacts(10_000, 1, 1, "BR", 86_400, 0), "pass"),
        (FraudFacts(600_000, 1, 1, "BR", 100, 0), "pass"),
        (FraudFacts(600_000, 12, 12, "BR", 100, 0), "review"),
        (FraudFacts(3_000_000, 1, 1, "US", 86_400, 0), "block"),
        (FraudFacts(10_000, 1, 1, "BR", 100, 5), "pass"),
        (FraudFacts(600_000, 1, 1, "BR", 100, 5), "review"),
    ],
)
def test_fraud_rules(facts, decision):
    assert screen(facts).decision == decision


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('{"token": "4242424242424242"}', True),
        ('{"number": "4242 4242 4242 4242"}', True),
        ('{"n": "4000-0000-0000-0002"}', True),
        ('{"phone": "+55 11 98765-4321"}', False),
        ('{"postal_code": "01310-100"}', False),
        ('{"token": "pm_card_visa"}', False),
    ],
)
def test_card_numbers_are_detected(text, refused):
    assert carries_card_number(text) is refused
