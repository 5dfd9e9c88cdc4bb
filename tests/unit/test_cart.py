import dataclasses

import pytest

from actors.cart.model import Cart, CartRules, CartView, CartViewLine
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
    assert [line.sku for line in again.view().lines] == ["B-2", "A-1"]


def test_event_time_comes_from_the_command():
    cart = Cart("c1")
    events = cart.add("A-1", "Apple", 250, 1, now_ms=1_700_000_000_123, rules=RULES)
    assert not isinstance(events, Rejected)
    assert events[0].occurred_at == "2023-11-14T22:13:20.123Z"


def test_the_view_is_a_frozen_value_with_the_coupon():
    cart = Cart("c1")
    cart.add("A-1", "Apple", 250, 2, 1, RULES)
    cart.apply_coupon(" save10 ", 2)
    view = cart.view()
    assert view == CartView("c1", 2, (CartViewLine("A-1", "Apple", 2, 250, 500),), 500, "SAVE10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.coupon = None  # type: ignore[misc]


def test_coupon_is_part_of_the_document():
    cart = Cart("c1")
    events = cart.apply_coupon("save10", 5)
    assert not isinstance(events, Rejected)
    assert [e.type for e in events] == ["cart.coupon_applied"]
    assert events[0].payload == {"cart_id": "c1", "code": "SAVE10"}
    again = Cart.from_doc("c1", cart.to_doc(), cart.version)
    assert again.coupon == "SAVE10" and again.view() == cart.view()
    assert Cart.from_doc("c2", {"lines": []}, 3).coupon is None  # pre-v2 documents


def test_applying_the_same_coupon_again_changes_nothing_and_a_bad_code_is_rejected():
    cart = Cart("c1")
    cart.apply_coupon("SAVE10", 1)
    assert cart.apply_coupon("save10", 2) == [] and cart.version == 1
    bad = cart.apply_coupon("no spaces", 3)
    assert isinstance(bad, Rejected) and bad.code == "invalid-coupon-code"
    assert cart.coupon == "SAVE10" and cart.version == 1


def test_remove_coupon_and_clear_forget_it():
    cart = Cart("c1")
    assert cart.remove_coupon(1) == []
    cart.apply_coupon("SAVE10", 2)
    assert [e.type for e in cart.remove_coupon(3)] == ["cart.coupon_removed"]
    assert cart.coupon is None
    cart.apply_coupon("SAVE10", 4)
    assert [e.type for e in cart.clear(5)] == ["cart.cleared"]  # a coupon-only cart too
    assert cart.coupon is None and cart.lines == {}


def test_absorb_takes_lines_within_the_rules_and_the_coupon_in_one_event():
    anon = Cart("anon")
    anon.add("A-1", "Apple", 250, 8, 1, RULES)
    anon.add("B-2", "Banana", 100, 1, 1, RULES)
    anon.add("C-3", "Cherry", 300, 1, 1, RULES)
    anon.apply_coupon("SAVE10", 1)
    user = Cart("user:1")
    user.add("A-1", "Apple", 250, 5, 1, RULES)
    user.add("D-4", "Date", 50, 1, 1, RULES)
    view = anon.view()
    events = user.absorb(view.lines, view.coupon, 9, RULES)
    assert [e.type for e in events] == ["cart.absorbed"]
    assert user.lines["A-1"].quantity == 10  # capped at max_quantity
    assert "B-2" in user.lines and "C-3" not in user.lines  # max_lines is 3
    assert user.coupon == "SAVE10" and user.version == 3
    assert events[0].payload["coupon"] == "SAVE10"


def test_absorb_keeps_the_users_own_coupon():
    user = Cart("user:1")
    user.apply_coupon("MINE", 1)
    assert user.absorb((), "THEIRS", 2, RULES) == []
    assert user.coupon == "MINE" and user.version == 1
    events = user.absorb((CartViewLine("A-1", "Apple", 1, 250, 250),), "THEIRS", 3, RULES)
    assert events[0].payload["coupon"] is None and user.coupon == "MINE"
