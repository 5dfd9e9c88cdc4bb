"""The in-process search index: text pipeline, typos, facets = list counts, cursors."""

from __future__ import annotations

import pytest

from cluster.seed import demo_products
from serve.search.index import (
    PRICE_BANDS,
    SORTS,
    Doc,
    Filters,
    SearchIndex,
    edit_distance,
    fold,
    stem,
)
from serve.search.port import SearchEngine


def _doc(p: dict, **signals: float) -> Doc:
    return Doc(
        p["sku"],
        p["name"],
        p["description"],
        p["category"],
        p["price_minor"],
        p["attributes"],
        **signals,
    )


@pytest.fixture(scope="module")
def products() -> list[dict]:
    return demo_products(600)


@pytest.fixture(scope="module")
def index(products) -> SearchIndex:
    ix = SearchIndex()
    for n, p in enumerate(products):
        ix.upsert(_doc(p, created=float(n % 37), rating=(n % 5) + 0.5, popularity=float(n % 11)))
    return ix


def _names(ix: SearchIndex, q: str, n: int = 3) -> list[str]:
    result = ix.search(ix.parse(q), Filters(), "relevance", n)
    return [ix.docs[s].name for s in result.slots]  # type: ignore[union-attr]


def test_text_pipeline_folds_accents_and_stems_both_languages():
    assert fold("Açaí Café") == "acai cafe"
    assert stem("camisetas") == stem("camiseta")
    assert stem("headphones") == stem("headphone")
    assert stem("cafés") == stem("cafe") == stem(fold("café"))
    assert edit_distance("camisetta", "camiseta", 2) == 1
    assert edit_distance("ouvdo", "ouvido", 1) == 1
    assert edit_distance("abcdef", "uvwxyz", 2) == 3


def test_accents_typos_plurals_and_portuguese_find_the_right_products(index):
    assert all("T-Shirt" in n for n in _names(index, "camisetta"))
    assert all("T-Shirt" in n for n in _names(index, "camisetas"))
    assert all(("Headphones" in n or "Earbuds" in n) for n in _names(index, "fne de ouvdo"))
    assert all("Açaí" in n for n in _names(index, "acai"))
    assert _names(index, "acai") == _names(index, "açaí")
    assert all("Headphones" in n for n in _names(index, "headphone"))


def test_prefix_and_phrase(index):
    assert all("Wireless" in n for n in _names(index, "wirel"))
    assert _names(index, "wirel ") == []  # a finished word is not a prefix
    phrase = index.search(index.parse('"dark chocolate"'), Filters(), "relevance", 50)
    assert phrase.total > 0
    assert all("Dark Chocolate" in index.docs[s].name for s in phrase.slots)  # type: ignore[union-attr]


def test_garbage_matches_nothing_and_never_raises(index):
    for q in ['"*:(&|!', "*", "'; DROP TABLE products; --", "x" * 1000, '"', "   ", "ção"]:
        index.search(index.parse(q), Filters(), "relevance", 10)
    assert index.search(index.parse('"*:(&|!'), Filters(), "relevance", 10).total == 0
    assert index.search(index.parse("zzzzqqqq"), Filters(), "relevance", 10).total == 0


def _all(ix: SearchIndex, q: str | None, filters: Filters, sort: str, page: int = 7) -> list[int]:
    """Walk every page with the keyset cursor."""
    query = ix.parse(q) if q else None
    out: list[int] = []
    after = None
    while True:
        r = ix.search(query, filters, sort, page + 1, after, facets=False)
        out += r.slots[:page]
        if len(r.slots) <= page:
            return out
        after = (r.keys[page - 1], ix.skus[r.slots[page - 1]])


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("q", [None, "black", "shoes"])
def test_cursor_walk_matches_one_big_page_under_every_sort(index, sort, q):
    filters = Filters()
    walked = _all(index, q, filters, sort)
    whole = index.search(index.parse(q) if q else None, filters, sort, 10_000, facets=False)
    assert walked == whole.slots
    assert len(set(walked)) == len(walked) == whole.total
    keys = whole.keys
    assert keys == sorted(keys)


def test_sorts_order_by_their_field(index):
    by_price = index.search(None, Filters(), "price_asc", 50).slots
    prices = [index.price[s] for s in by_price]
    assert prices == sorted(prices)
    desc = index.search(None, Filters(), "price_desc", 50).slots
    assert [index.price[s] for s in desc] == sorted((index.price[s] for s in desc), reverse=True)
    rated = index.search(None, Filters(), "rating", 50).slots
    assert [index.rating[s] for s in rated] == sorted(
        (index.rating[s] for s in rated), reverse=True
    )


@pytest.mark.parametrize("q", [None, "black", "premium"])
def test_facet_counts_equal_what_the_filtered_list_returns(index, q):
    query = index.parse(q) if q else None
    base = Filters(min_price=5000)
    facets = index.search(query, base, "relevance", 1).facets
    assert facets["category"]
    for category, count in facets["category"].items():
        f = Filters(category=category, min_price=5000)
        assert index.search(query, f, "relevance", 1).total == count
    for band, count in facets["price"].items():
        lo, _, hi = band.partition("-")
        f = Filters(min_price=int(lo), max_price=int(hi) if hi else None)
        assert index.search(query, f, "relevance", 1).total == count
    attrs = [k for k in facets if k.startswith("attr.")]
    assert attrs
    for key in attrs[:4]:
        for value, count in facets[key].items():
            f = Filters(min_price=5000, attributes={key[5:]: {value}})
            assert index.search(query, f, "relevance", 1).total == count
    assert len(PRICE_BANDS) >= 4


def test_unknown_filter_values_give_an_empty_result(index):
    assert index.search(None, Filters(category="nope"), "relevance", 5).total == 0
    assert index.search(None, Filters(attributes={"colour": {"plaid"}}), "relevance", 5).total == 0


def test_upsert_and_remove_follow_the_catalog(products):
    ix = SearchIndex(capacity=4)
    ix.build(_doc(p) for p in products[:50])
    sku = products[0]["sku"]
    assert "Zanzibar" not in " ".join(_names(ix, "zanzibar"))
    ix.upsert(Doc(sku, "Zanzibar Explorer Kettle", "A kettle.", "home-kitchen", 1234, {}))
    assert _names(ix, "zanzibar") == ["Zanzibar Explorer Kettle"]
    assert _names(ix, "zanzibr") == ["Zanzibar Explorer Kettle"]
    assert len(ix) == 50
    assert ix.remove(sku)
    assert _names(ix, "zanzibar") == []
    assert ix.search(ix.parse("zanzibar"), Filters(), "relevance", 5).total == 0
    assert len(ix) == 49
    assert not ix.remove(sku)
    ix.upsert(_doc(products[0]))
    assert len(ix) == 50 and sku in ix


def test_suggest_completes_prefixes_with_typos(index):
    assert len(index.suggest("a")) <= 10
    texts = [s["text"] for s in index.suggest("camis")]
    assert texts and all("Shirt" in t for t in texts)  # camisa, camiseta
    assert {"text": "toys", "kind": "category"} in index.suggest("brinq")
    typo = [s["text"] for s in index.suggest("headphnes")]
    assert typo and all("Headphones" in t for t in typo)
    assert index.suggest('"*:(&|!') == []


def test_the_index_is_the_search_port_and_pages_name_their_skus(index, products):
    assert isinstance(index, SearchEngine)
    result = index.search(index.parse("black"), Filters(), "price_asc", 10)
    assert result.skus == [index.skus[s] for s in result.slots] and result.skus
    ix = SearchIndex()
    ix.upsert(_doc(products[0], rating=4.5, rating_count=3))
    assert ix.rating_of(products[0]["sku"]) == (4.5, 3)
    assert ix.rating_of("NOPE-1") == (0.0, 0)
