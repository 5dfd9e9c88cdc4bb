"""Search, facets, sorts, cursors and suggest over HTTP (the running system, demo catalog)."""

import asyncio
import time

import pytest

from actors.writebehind import insert_outbox
from streams.events import PRODUCT_UPDATED, make_event
from tests.e2e.problems import assert_problem

pytestmark = pytest.mark.e2e

SORTS = ["relevance", "price_asc", "price_desc", "newest", "rating", "popularity"]


def _page(http, **params):
    reply = http.get("/v1/products", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _walk(http, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        page = _page(http, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_typos_accents_and_portuguese_find_the_products(http):
    shirts = _page(http, q="camisetta", limit=5)["items"]
    assert shirts and all("T-Shirt" in p["name"] for p in shirts)
    phones = _page(http, q="fne de ouvdo", limit=5)["items"]
    assert phones and all(("Headphones" in p["name"] or "Earbuds" in p["name"]) for p in phones)
    assert _page(http, q="acai", limit=5) == _page(http, q="açaí", limit=5)
    assert all("Açaí" in p["name"] for p in _page(http, q="acai", limit=5)["items"])
    assert _page(http, q="kairo tablet")["items"][0]["sku"] == "ELE-000001"


def test_query_combines_with_filters_and_facets_count_what_the_list_returns(http):
    page = _page(http, q="black", min_price=5000, limit=5)
    facets = page["facets"]
    assert set(facets) >= {"category", "price"}
    category, count = sorted(facets["category"].items(), key=lambda kv: kv[1])[0]
    listed = _walk(http, q="black", min_price=5000, category=category, limit=100)
    assert len(listed) == count
    assert all(p["category"] == category and p["price"]["amount"] >= 5000 for p in listed)
    colour = facets.get("attr.colour", {})
    assert colour.get("black")
    listed = _walk(http, q="black", min_price=5000, **{"attr.colour": "black"}, limit=100)
    assert len(listed) == colour["black"]
    assert all(p["attributes"]["colour"] == "black" for p in listed)


@pytest.mark.parametrize("sort", SORTS)
def test_cursor_walk_under_every_sort_has_no_gaps_or_repeats(http, sort):
    walked = _walk(http, q="shoes", sort=sort, limit=33)
    skus = [p["sku"] for p in walked]
    assert (
        len(skus)
        == len(set(skus))
        == _page(http, q="shoes", sort=sort, limit=1)["facets"]["category"].get("shoes", 0)
        + sum(
            n
            for c, n in _page(http, q="shoes", limit=1)["facets"]["category"].items()
            if c != "shoes"
        )
    )
    if sort == "price_asc":
        prices = [p["price"]["amount"] for p in walked]
        assert prices == sorted(prices)
    if sort == "price_desc":
        prices = [p["price"]["amount"] for p in walked]
        assert prices == sorted(prices, reverse=True)


def test_a_cursor_from_another_sort_is_a_422(http):
    cursor = _page(http, q="shoes", sort="price_asc", limit=5)["next_cursor"]
    assert cursor
    body = assert_problem(
        http.get("/v1/products", params={"q": "shoes", "sort": "newest", "cursor": cursor}), 422
    )
    assert body["type"].endswith("cursor-sort-mismatch")


@pytest.mark.parametrize(
    "params",
    [
        {"q": "x" * 1000},
        {"sort": "cheapest"},
        {"sort": ""},
        {"attr.Colour!": "red"},
        {"attr.colour": "x" * 200},
        {"q": "shoes", "cursor": "eyJzb3J0IjoxfQ"},
        # NaN / Infinity / -Infinity keys (json.loads takes them; we never issue them)
        {"sort": "price_asc", "cursor": "eyJzb3J0IjoicHJpY2VfYXNjIiwia2V5IjpOYU4sImFmdGVyIjoiQSJ9"},
        {"sort": "newest", "cursor": "eyJzb3J0IjoibmV3ZXN0Iiwia2V5IjpJbmZpbml0eSwiYWZ0ZXIiOiJBIn0"},
        {"cursor": "eyJzb3J0IjoicmVsZXZhbmNlIiwia2V5IjotSW5maW5pdHksImFmdGVyIjoiQSJ9"},
    ],
)
def test_search_garbage_is_a_problem(http, params):
    assert_problem(http.get("/v1/products", params=params), {400, 422})


@pytest.mark.parametrize(
    "params",
    [
        {"q": '"*:(&|!'},
        {"q": "'; DROP TABLE products; --"},
        {"category": "no-such-category"},
        {"attr.colour": "plaid"},
        {"q": "zzqqxxvvkk"},
    ],
)
def test_search_strings_that_match_nothing_are_an_empty_page(http, params):
    page = _page(http, **params)
    assert page["items"] == [] and page["next_cursor"] is None


def test_empty_q_lists_the_catalog(http):
    assert _page(http, q="", limit=3)["items"] == _page(http, limit=3)["items"]


def test_suggest_completes_prefixes_and_typos(http):
    reply = http.get("/v1/search/suggest", params={"q": "camis"})
    assert reply.status_code == 200
    items = reply.json()["items"]
    assert 0 < len(items) <= 10 and all("Shirt" in i["text"] for i in items)
    typo = http.get("/v1/search/suggest", params={"q": "headphnes"}).json()["items"]
    assert typo and all("Headphones" in i["text"] for i in typo)
    toys = http.get("/v1/search/suggest", params={"q": "brinq"}).json()["items"]
    assert {"text": "toys", "kind": "category"} in toys
    assert http.get("/v1/search/suggest", params={"q": "*:(&|!"}).json()["items"] == []


@pytest.mark.parametrize(
    "params", [{}, {"q": ""}, {"q": "x" * 101}, {"q": "a", "limit": 11}, {"q": "a", "limit": 0}]
)
def test_suggest_garbage_is_a_problem(http, params):
    assert_problem(http.get("/v1/search/suggest", params=params), 422)


def test_etag_and_cache_control_on_catalog_gets(http):
    for path, params in (
        ("/v1/products", {"q": "shoes"}),
        ("/v1/products/ELE-000001", {}),
        ("/v1/search/suggest", {"q": "sho"}),
    ):
        first = http.get(path, params=params)
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "public, no-cache"
        again = http.get(path, params=params, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        changed = http.get(path, params=params, headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200 and changed.headers["etag"] == etag
    metrics = http.get("/metrics").text
    assert "agora_catalog_cache_lookups_total" in metrics
    assert "agora_search_index_lag_seconds" in metrics


async def test_an_edit_is_searchable_and_on_its_page_within_one_second(http, db):
    """A product row changes and ``product.updated`` goes through the outbox: every replica's
    index and page follow (the admin routes emit the same event)."""
    sku = "GAR-000042"
    before = http.get(f"/v1/products/{sku}").json()
    word = f"zq{int(time.time() * 1000) % 10**8:08d}"
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE products SET name = $2, updated_at = now() WHERE sku = $1",
            sku,
            f"{before['name']} {word}",
        )
        await insert_outbox(
            conn, [make_event(PRODUCT_UPDATED, sku, {"sku": sku}, int(time.time() * 1000))]
        )
    started = time.monotonic()
    try:
        while True:
            found = [p["sku"] for p in _page(http, q=word)["items"]]
            page = http.get(f"/v1/products/{sku}").json()
            if found == [sku] and word in page["name"]:
                break
            assert time.monotonic() - started < 1.0, (found, page["name"])
            await asyncio.sleep(0.02)
        # Every replica (requests spread over them) answers with the edit.
        for _ in range(8):
            assert [p["sku"] for p in _page(http, q=word)["items"]] == [sku]
    finally:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE products SET name = $2 WHERE sku = $1", sku, before["name"])
            await insert_outbox(
                conn, [make_event(PRODUCT_UPDATED, sku, {"sku": sku}, int(time.time() * 1000))]
            )
