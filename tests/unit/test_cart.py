from actors.cart.model import Cart, CartRules
from actors.messages import Rejected

RULES = CartRules(max_lines=3, max_quantity=10)


def test_add_creates_a_line_and_an_event():
    cart = Cart("c1")
    events = cart.add("A-1", "Apple", 250, 2, now_ms=1_000, rules=RULES)
    assert not isinstance(events, Rejected)
    assert [e.type for e in events] == ["cart.item_added"]
    assert events[0].key == "c1"
    assert events[0].payload["line_quantity"] == 2
    assert cart.subtotal == 500
    assert cart.version == 1


def test_quantities_of_the_same_sku_add_up():
    cart = Cart("c1")
    cart.add("A-1", "Apple", 250, 2, 1, RULES)
    cart.add("A-1", "Apple", 250, 3, 2, RULES)
    assert cart.lines["A-1"].quantity == 5
    assert cart.subtotal == 1250


def test_quantity_limit_is_a_rejection_and_changes_nothing():
    cart = Cart("c1")
    cart.add("A-1", "Apple", 250, 9, 1, RULES)
    result = cart.add("A-1", "Apple", 250, 2, 2, RULES)
    assert isinstance(result, Rejected) and result.code == "quantity-limit"
    assert cart.lines["A-1"].quantity == 9
    assert cart.version == 1


def test_cart_full_is_a_rejection():
    cart = Cart("c1")
    for i in range(3):
        cart.add(f"S-{i}", "x", 100, 1, i, RULES)
    result = cart.add("S-9", "x", 100, 1, 9, RULES)
    assert isinstance(result, Rejected) and result.code == "cart-full"
    assert len(cart.lines) == 3


def test_set_quantity_zero_removes_and_unknown_line_is_rejected():
    cart = Cart("c1")
    cart.add("A-1", "Apple", 250, 2, 1, RULES)
    assert isinstance(cart.set_quantity("B-2", 1, 2, RULES), Rejected)
    events = cart.set_quantity("A-1", 0, 3, RULES)
    assert not isinstance(events, Rejected)
    assert [e.type for e in events] == ["cart.item_removed"]
    assert cart.lines == {}


def test_invalid_quantities_are_rejected():
    cart = Cart("c1")
    assert isinstance(cart.add("A-1", "Apple", 250, 0, 1, RULES), Rejected)
    assert isinstance(cart.add("A-1", "Apple", 0, 1, 1, RULES), Rejected)
    assert isinstance(cart.set_quantity("A-1", -1, 1, RULES), Rejected)
    assert cart.version == 0


def test_doc_round_trip_keeps_lines_order_and_version():
    cart = Cart("c1")
    cart.add("B-2", "Banana", 100, 1, 1, RULES)
    cart.add("A-1", "Apple", 250, 2, 2, RULES)
    again = Cart.from_doc("c1", cart.to_doc(), cart.version)
    assert again.view() == cart.view()
    assert [line["sku"] for line in again.view()["lines"]] == ["B-2", "A-1"]


def test_event_time_comes_from_the_command():
    cart = Cart("c1")
    events = cart.add("A-1", "Apple", 250, 1, now_ms=1_700_000_000_123, rules=RULES)
    assert not isinstance(events, Rejected)
    assert events[0].occurred_at == "2023-11-14T22:13:20.123Z"
