"""Popularity (units sold) follows orders on the replica's index (no Ray, no DB).

Order events name an order, not its lines: the catalog re-reads the units sold
of the SKUs in the named orders' lines, one query for a window of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from cluster.adapters.catalog_search import SOLD_STATUSES, Signals
from cluster.adapters.pricing_store import CatalogLoad, ProductFacts, Tables
from serve import catalog_state
from serve.catalog_state import CatalogState
from serve.search.index import Filters
from streams.events import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_CREATED,
    ORDER_REFUNDED,
    ORDER_SHIPPED,
    PRODUCT_REVIEWED,
    SEARCH_REINDEX_REQUESTED,
    EventType,
    make_event,
)


def _facts(sku: str) -> ProductFacts:
    return ProductFacts(sku, f"Item {sku}", "", "home-kitchen", 1_000, "BRL", 500, {}, [])


class Store:
    """Both loading ports over dicts; units sold are summed from ``orders`` as SQL does."""

    def __init__(self) -> None:
        self.products = {s: _facts(s) for s in ("A", "B", "C")}
        self.signals = {s: Signals(1.0, False, 0.0, 0, 0.0) for s in self.products}
        self.orders: dict[str, tuple[str, dict[str, int]]] = {}
        self.popularity_reads: list[list[str]] = []
        self.failures = 0  # popularity reads to fail before answering
        self.hold_signals: asyncio.Event | None = None  # a signals read waits for it

    def units(self, sku: str) -> float:
        sold = [lines for status, lines in self.orders.values() if status in SOLD_STATUSES]
        return float(sum(lines.get(sku, 0) for lines in sold))

    async def load_catalog(self, _db: Any, _now: int) -> CatalogLoad:
        return CatalogLoad(Tables(), {}, dict(self.products), {s: 3 for s in self.products})

    async def load_product(self, _db: Any, sku: str) -> tuple[ProductFacts, int] | None:
        await asyncio.sleep(0)
        return (self.products[sku], 3) if sku in self.products else None

    async def load_signals(self, _db: Any, skus: list[str] | None = None) -> dict[str, Signals]:
        wanted = self.signals if skus is None else {s: self.signals[s] for s in skus}
        read = {s: replace(v, popularity=self.units(s)) for s, v in wanted.items()}
        if self.hold_signals is not None:  # read now, answered later
            await self.hold_signals.wait()
        return read

    async def load_popularity(self, _db: Any, orders: list[str]) -> dict[str, float]:
        self.popularity_reads.append(list(orders))
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise OSError("database away")
        named = {sku for o in orders if o in self.orders for sku in self.orders[o][1]}
        return {sku: self.units(sku) for sku in named}


@pytest.fixture(autouse=True)
def _short_window(monkeypatch):
    monkeypatch.setattr(catalog_state, "POPULARITY_WINDOW_S", 0.05)


async def _state(store: Store) -> CatalogState:
    state = CatalogState(db=None, store=store, search_store=store)
    await state.warm()
    return state


def _event(kind: EventType, order: str) -> Any:
    return make_event(kind, order, {"order_id": order, "status": "x", "total": 1}, 1)


def _popular(state: CatalogState) -> list[str]:
    index = state.index
    return [index.skus[s] for s in index.search(None, Filters(), "popularity", 10).slots]


def _units(state: CatalogState, sku: str) -> float:
    return float(state.index.popularity[state.index.slot_of[sku]])


async def _settle(landed: Callable[[], bool]) -> None:
    """Until ``landed()`` holds, at most 10 s (a busy CI box is slow)."""
    for _ in range(1000):
        if landed():
            return
        await asyncio.sleep(0.01)


async def test_a_burst_of_confirmed_orders_costs_one_query_and_counts_each_order_once():
    store = Store()
    state = await _state(store)
    assert _popular(state) == ["A", "B", "C"]  # no sales: SKU order
    store.orders = {"o1": ("confirmed", {"C": 2}), "o2": ("confirmed", {"B": 1, "C": 1})}
    for event in (_event(ORDER_CONFIRMED, "o1"), _event(ORDER_CONFIRMED, "o2")):
        state.on_event(event)
        state.on_event(event)  # delivered twice
    await _settle(lambda: _popular(state) == ["C", "B", "A"])
    await asyncio.sleep(0.2)  # a second query, if any, lands too
    assert _popular(state) == ["C", "B", "A"]
    assert (_units(state, "C"), _units(state, "B"), _units(state, "A")) == (3.0, 1.0, 0.0)
    assert store.popularity_reads == [["o1", "o2"]]


async def test_cancelled_and_refunded_orders_take_their_units_back():
    store = Store()
    state = await _state(store)
    store.orders = {"o1": ("confirmed", {"C": 2}), "o2": ("confirmed", {"B": 1})}
    state.on_event(_event(ORDER_CONFIRMED, "o1"))
    state.on_event(_event(ORDER_CONFIRMED, "o2"))
    await _settle(lambda: _popular(state) == ["C", "B", "A"])
    store.orders["o1"] = ("cancelled", {"C": 2})
    state.on_event(_event(ORDER_CANCELLED, "o1"))
    await _settle(lambda: _popular(state) == ["B", "A", "C"])
    assert _units(state, "C") == 0.0
    store.orders["o2"] = ("shipped", {"B": 1})
    state.on_event(_event(ORDER_SHIPPED, "o2"))  # still sold: no query
    await asyncio.sleep(0.2)
    reads = len(store.popularity_reads)
    store.orders["o2"] = ("refunded", {"B": 1})
    state.on_event(_event(ORDER_REFUNDED, "o2"))
    await _settle(lambda: _units(state, "B") == 0.0)
    assert _popular(state) == ["A", "B", "C"]
    assert len(store.popularity_reads) == reads + 1 and store.popularity_reads[-1] == ["o2"]


async def test_other_order_events_and_unknown_orders_change_nothing():
    store = Store()
    state = await _state(store)
    version, events = state.index.version, state.events
    state.on_event(_event(ORDER_CREATED, "o1"))
    state.on_event(_event(ORDER_SHIPPED, "o1"))
    await asyncio.sleep(0.2)
    assert store.popularity_reads == []
    state.on_event(_event(ORDER_CONFIRMED, "o-gone"))  # no such order (or no lines)
    await _settle(lambda: store.popularity_reads == [["o-gone"]])
    await asyncio.sleep(0.05)
    # Nothing changed: cached list bodies (keyed on both) stay.
    assert (state.index.version, state.events) == (version, events)


async def test_a_failed_read_is_tried_again():
    store = Store()
    state = await _state(store)
    store.failures = 1
    store.orders = {"o1": ("confirmed", {"B": 4})}
    state.on_event(_event(ORDER_CONFIRMED, "o1"))
    await _settle(lambda: _units(state, "B") == 4.0)
    assert _units(state, "B") == 4.0 and store.popularity_reads == [["o1"], ["o1"]]


async def test_an_older_signals_read_landing_later_keeps_the_newer_units():
    """A product re-read (a review) reads signals before a sale; the sale's re-read
    lands first; the review's read, landing last, keeps its rating but not its units."""
    store = Store()
    state = await _state(store)
    store.hold_signals = held = asyncio.Event()
    store.signals["B"] = Signals(1.0, False, 5.0, 1, 0.0)
    state.on_event(make_event(PRODUCT_REVIEWED, "B", {"sku": "B"}, 1))
    await _settle(lambda: "B" in state._product_loads)
    await asyncio.sleep(0.01)  # its signals are read (no sale yet) and held
    store.hold_signals = None
    store.orders = {"o1": ("confirmed", {"B": 2})}
    state.on_event(_event(ORDER_CONFIRMED, "o1"))
    await _settle(lambda: _units(state, "B") == 2.0)
    assert "B" in state._product_loads  # the review's re-read has not landed yet
    held.set()
    await _settle(lambda: "B" not in state._product_loads)
    assert state.index.rating_of("B") == (5.0, 1)
    assert _units(state, "B") == 2.0 and _popular(state)[0] == "B"


async def test_a_sale_read_during_a_rebuild_carries_into_the_new_index():
    store = Store()
    state = await _state(store)
    generation = state.index_generation
    store.hold_signals = held = asyncio.Event()
    state.on_event(make_event(SEARCH_REINDEX_REQUESTED, "search", {}, 1))
    await asyncio.sleep(0.02)  # the rebuild has read the signals (no sale yet)
    store.hold_signals = None
    store.orders = {"o1": ("confirmed", {"C": 5})}
    state.on_event(_event(ORDER_CONFIRMED, "o1"))
    await _settle(lambda: _units(state, "C") == 5.0)  # into the index being replaced
    assert state.index_generation == generation
    held.set()
    await _settle(lambda: state.index_generation > generation)
    assert state.index_generation > generation
    assert _units(state, "C") == 5.0 and _popular(state)[0] == "C"
