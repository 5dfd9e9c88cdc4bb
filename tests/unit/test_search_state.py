"""The replica's catalog keeps its search index current through product events (no Ray, no DB)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cluster.adapters.catalog_search import Signals
from cluster.adapters.pricing_store import CatalogLoad, ProductFacts, Tables
from serve.catalog_state import CatalogState
from serve.search.index import Filters
from streams.events import (
    PRODUCT_CREATED,
    PRODUCT_DELETED,
    PRODUCT_REVIEWED,
    PRODUCT_UPDATED,
    SEARCH_REINDEX_REQUESTED,
    make_event,
)


def _facts(sku: str, name: str, price: int = 1_000) -> ProductFacts:
    return ProductFacts(sku, name, "", "home-kitchen", price, "BRL", 500, {"colour": "red"}, [])


class Store:
    """Both loading ports over dicts (the catalog's and search's)."""

    def __init__(self) -> None:
        self.products = {"A": _facts("A", "Copper Kettle"), "B": _facts("B", "Iron Pan")}
        self.signals = {s: Signals(1.0, False, 0.0, 0, 0.0) for s in self.products}
        self.catalog_loads = 0

    async def load_catalog(self, _db: Any, _now: int) -> CatalogLoad:
        self.catalog_loads += 1
        return CatalogLoad(Tables(), {}, dict(self.products), {s: 3 for s in self.products})

    async def load_product(self, _db: Any, sku: str) -> tuple[ProductFacts, int] | None:
        await asyncio.sleep(0)
        return (self.products[sku], 3) if sku in self.products else None

    async def load_signals(self, _db: Any, skus: list[str] | None = None) -> dict[str, Signals]:
        wanted = (
            self.signals
            if skus is None
            else {s: self.signals[s] for s in skus if s in self.signals}
        )
        return dict(wanted)


async def _state(store: Store) -> CatalogState:
    state = CatalogState(db=None, store=store, search_store=store)
    await state.warm()
    return state


def _found(state: CatalogState, q: str) -> list[str]:
    index = state.index
    return [index.skus[s] for s in index.search(index.parse(q), Filters(), "relevance", 10).slots]


def _top_rated(state: CatalogState) -> str:
    top = state.index.search(None, Filters(), "rating", 1).slots
    return state.index.skus[top[0]]


async def _settle(landed: Callable[[], bool]) -> None:
    """Let background re-reads (and a rebuild in the default executor) land: until
    ``landed()`` holds, at most 10 s (a busy CI box can take more than half a second)."""
    for _ in range(1000):
        if landed():
            return
        await asyncio.sleep(0.01)


async def test_created_updated_deleted_and_reviewed_products_follow_into_the_index():
    store = Store()
    state = await _state(store)
    assert _found(state, "kettle") == ["A"]
    store.products["C"] = _facts("C", "Steel Kettle")
    store.signals["C"] = Signals(2.0, False, 0.0, 0, 0.0)
    state.on_event(make_event(PRODUCT_CREATED, "C", {"sku": "C"}, 1))
    await _settle(lambda: len(_found(state, "kettle")) == 2)
    assert sorted(_found(state, "kettle")) == ["A", "C"]
    store.products["A"] = _facts("A", "Copper Teapot")
    state.on_event(make_event(PRODUCT_UPDATED, "A", {"sku": "A"}, 2))
    await _settle(lambda: _found(state, "teapot") == ["A"])
    assert _found(state, "kettle") == ["C"] and _found(state, "teapot") == ["A"]
    assert (await state.product("A"))[0].name == "Copper Teapot"
    store.signals["C"] = Signals(2.0, False, 4.5, 2, 0.0)
    state.on_event(make_event(PRODUCT_REVIEWED, "C", {"sku": "C"}, 3))
    await _settle(lambda: _top_rated(state) == "C")
    assert _top_rated(state) == "C"
    store.signals["C"] = Signals(2.0, True, 4.5, 2, 0.0)  # retired
    state.on_event(make_event(PRODUCT_DELETED, "C", {"sku": "C"}, 4))
    await _settle(lambda: _found(state, "kettle") == [])
    assert _found(state, "kettle") == [] and await state.product("C") is None


async def test_the_same_event_twice_changes_nothing_more():
    store = Store()
    state = await _state(store)
    store.products["A"] = _facts("A", "Copper Teapot")
    event = make_event(PRODUCT_UPDATED, "A", {"sku": "A"}, 2)
    state.on_event(event)
    state.on_event(event)
    await _settle(lambda: _found(state, "teapot") == ["A"])
    await asyncio.sleep(0.2)  # a second apply, if any, lands too
    assert _found(state, "teapot") == ["A"] and len(state.index) == 2


async def test_a_reindex_request_rereads_the_catalog():
    store = Store()
    state = await _state(store)
    store.products["B"] = _facts("B", "Iron Wok")  # changed in SQL: no product event
    assert _found(state, "wok") == []
    state.on_event(make_event(SEARCH_REINDEX_REQUESTED, "search", {}, 5))
    await _settle(lambda: _found(state, "wok") == ["B"])
    assert _found(state, "wok") == ["B"] and store.catalog_loads == 2


async def test_without_search_signals_text_search_still_works():
    store = Store()

    class Broken:
        async def load_signals(self, *_args: Any) -> dict[str, Signals]:
            raise OSError("database away")

    state = CatalogState(db=None, store=store, search_store=Broken())
    await state.warm()
    assert _found(state, "kettle") == ["A"]
