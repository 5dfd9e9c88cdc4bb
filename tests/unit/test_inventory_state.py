import pytest

from actors.inventory.model import LineHold, StockItem, committable, reserve_all
from actors.messages import Rejected

TTL = 60_000


def item(on_hand=10):
    return StockItem("SKU-1", on_hand)


def test_reserve_reduces_available_and_is_idempotent():
    s = item()
    assert s.reserve("r1", 3, 0, TTL) == []
    assert s.reserve("r1", 3, 1, TTL) == []
    assert s.available(2) == 7 and s.reserved(2) == 3


def test_reservation_that_does_not_fit_is_refused():
    s = item(2)
    result = s.reserve("r1", 3, 0, TTL)
    assert isinstance(result, Rejected) and result.code == "insufficient"
    assert result.available == 2
    assert s.available(0) == 2


def test_commit_turns_a_reservation_into_a_sale_once():
    s = item()
    s.reserve("r1", 4, 0, TTL)
    events = s.commit("r1", 1, threshold=6)
    assert not isinstance(events, Rejected)
    assert [e.type for e in events] == ["inventory.changed", "inventory.low_stock"]
    assert s.on_hand == 6 and s.reserved(1) == 0 and s.committed_units == 4
    assert s.commit("r1", 2, threshold=5) == []
    assert s.on_hand == 6


def test_release_is_idempotent_and_unknown_commit_refused():
    s = item()
    s.reserve("r1", 4, 0, TTL)
    assert s.release("r1", 1) == []
    assert s.release("r1", 2) == []
    assert isinstance(s.commit("r1", 3, 5), Rejected)
    assert isinstance(s.reserve("r1", 4, 4, TTL), Rejected)
    assert s.available(5) == 10


def test_expired_reservations_are_ignored_then_swept():
    s = item(5)
    s.reserve("r1", 5, 0, TTL)
    assert s.available(TTL - 1) == 0
    assert s.available(TTL) == 5
    assert s.sweep(TTL) == 1
    assert s.reservations == {}
    assert isinstance(s.commit("r1", TTL + 1, 5), Rejected)


@pytest.mark.parametrize(("on_hand", "ok"), [(3, True), (2, False)])
def test_on_hand_never_below_reserved(on_hand, ok):
    s = item()
    s.reserve("r1", 3, 0, TTL)
    result = s.set_on_hand(on_hand, 1, 5)
    assert isinstance(result, Rejected) != ok
    assert s.on_hand == (on_hand if ok else 10)


def test_unknown_sku_refuses_everything():
    s = StockItem("NOPE", known=False)
    assert isinstance(s.reserve("r", 1, 0, TTL), Rejected)
    assert isinstance(s.adjust(5, "restock", 0, 5), Rejected)


def test_doc_round_trip():
    s = item()
    s.reserve("r1", 2, 0, TTL, order_id="o1")
    s.reserve("r2", 1, 0, TTL)
    s.commit("r2", 1, 5)
    again = StockItem.from_doc("SKU-1", s.to_doc(), s.version)
    assert again.view(2) == s.view(2)
    assert again.finished == {"r2": "committed"}
    assert again.reservations["r1"].order_id == "o1"


def test_random_operations_keep_the_invariant():
    import random

    rng = random.Random(7)
    s = item(50)
    live = {}
    for step in range(2000):
        rid = f"r{rng.randrange(60)}"
        op = rng.choice(["reserve", "release", "commit"])
        if op == "reserve":
            result = s.reserve(rid, rng.randint(1, 5), step, 10**9)
            if result == [] and rid in s.reservations:
                live[rid] = s.reservations[rid].quantity
        elif op == "release":
            s.release(rid, step)
            live.pop(rid, None)
        else:
            s.commit(rid, step, 5)
            live.pop(rid, None)
        assert s.available(step) >= 0
        assert s.on_hand + s.committed_units == 50
        assert s.reserved(step) == sum(live.values())


def test_reserve_all_holds_every_line_or_none():

    items = {"A": StockItem("A", 5), "B": StockItem("B", 1)}
    lines = (LineHold("A", "o:A", 3), LineHold("B", "o:B", 2))
    short = reserve_all(items, lines, 0, TTL, "o")
    assert [(s.sku, s.requested, s.available) for s in short] == [("B", 2, 1)]
    assert items["A"].reserved(0) == 0 and items["B"].reserved(0) == 0
    fits = (LineHold("A", "o:A", 3), LineHold("B", "o:B", 1))
    assert reserve_all(items, fits, 0, TTL, "o") == ()
    assert reserve_all(items, fits, 1, TTL, "o") == ()  # a repeat holds nothing twice
    assert items["A"].available(1) == 2 and items["B"].available(1) == 0


def test_committable_refuses_when_one_reservation_is_gone():

    items = {"A": StockItem("A", 5)}
    items["A"].reserve("r1", 1, 0, TTL)
    assert committable(items, (LineHold("A", "r1", 1),)) is None
    refused = committable(items, (LineHold("A", "r1", 1), LineHold("A", "r2", 1)))
    assert isinstance(refused, Rejected) and refused.code == "unknown-reservation"
