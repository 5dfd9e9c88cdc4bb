"""Recommendations over HTTP: popular for anonymous callers, personalised in real time."""

import time

import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_shopper

pytestmark = pytest.mark.e2e


def skus(reply):
    assert reply.status_code == 200, reply.text
    return [item["sku"] for item in reply.json()["items"]]


def test_anonymous_callers_get_popular_items_shaped_like_product_list_items(http):
    reply = http.get("/v1/recommendations", params={"limit": 8})
    items = reply.json()["items"]
    assert reply.status_code == 200 and len(items) == 8
    page = http.get(f"/v1/products/{items[0]['sku']}").json()
    assert items[0] == page  # the same fields as GET /v1/products items
    assert skus(http.get("/v1/recommendations", params={"limit": 8})) == [i["sku"] for i in items]


def test_the_cart_and_recent_views_shape_the_answer_and_cart_items_never_come_back(http):
    shopper = new_shopper(http)
    anonymous = skus(http.get("/v1/recommendations", params={"limit": 20}))
    before = skus(http.get("/v1/recommendations", params={"limit": 20}, headers=auth(shopper)))
    assert before == anonymous  # no history yet: the popular items
    in_cart = anonymous[0]
    added = http.post("/v1/cart/items", json={"sku": in_cart, "quantity": 1}, headers=auth(shopper))
    assert added.status_code in (200, 201), added.text
    with_cart = skus(http.get("/v1/recommendations", params={"limit": 20}, headers=auth(shopper)))
    assert in_cart not in with_cart
    assert with_cart != [s for s in anonymous if s != in_cart][:20]  # personalised at once
    viewed = anonymous[-1]
    assert http.get(f"/v1/products/{viewed}", headers=auth(shopper)).status_code == 200
    deadline = time.monotonic() + 5
    while True:
        after = skus(http.get("/v1/recommendations", params={"limit": 20}, headers=auth(shopper)))
        if after != with_cart or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after != with_cart and in_cart not in after


def test_similar_items(http):
    sku = skus(http.get("/v1/recommendations", params={"limit": 1}))[0]
    similar = skus(http.get(f"/v1/products/{sku}/similar", params={"limit": 5}))
    assert len(similar) == 5 and sku not in similar
    assert len(skus(http.get(f"/v1/products/{sku}/similar"))) == 10


def test_recommendation_routes_refuse_garbage(http):
    for params in ({"limit": "abc"}, {"limit": 10_000}, {"limit": 0}, {"limit": -1}):
        assert_problem(http.get("/v1/recommendations", params=params), 422)
        assert_problem(http.get("/v1/products/ELE-000001/similar", params=params), 422)
    assert_problem(http.get("/v1/products/NOPE-0000/similar"), 404)
    assert_problem(http.get("/v1/products/" + "X" * 300 + "/similar"), 404)
    for sku in ("ab%3Cc%3E", "%C3%A9%C3%A9", "a%20b", "..%2F..%2Fetc", "%00"):
        assert_problem(http.get(f"/v1/products/{sku}/similar"), {404, 422})  # never a 500
    for params in ({"limit": "1e3"}, {"limit": "\x00"}, [("limit", "5"), ("limit", "abc")]):
        assert_problem(http.get("/v1/recommendations", params=params), 422)
    assert_problem(
        http.get("/v1/recommendations", headers={"Authorization": "Bearer garbage"}), 401
    )
    assert_problem(http.get("/v1/recommendations", headers={"X-Cart-Token": "x" * 500}), 422)
    reply = http.get("/v1/recommendations", headers={"X-Cart-Token": "forged.token"})
    assert reply.status_code == 200  # a forged cart token is no cart: popular items


def test_readiness_includes_the_models(http):
    reply = http.get("/readyz")
    assert reply.status_code == 200, reply.text


def test_product_page_views_shape_a_signed_in_shoppers_recommendations(http):
    shopper = new_shopper(http)
    mine = {"params": {"limit": 20}, "headers": auth(shopper)}
    before = http.get("/v1/recommendations", **mine).json()["items"]
    assert [i["sku"] for i in before] == skus(http.get("/v1/recommendations", params={"limit": 20}))
    category = "toys"
    listed = http.get("/v1/products", params={"category": category, "limit": 50})
    assert listed.status_code == 200, listed.text
    shown = {i["sku"] for i in before}
    viewed = [i["sku"] for i in listed.json()["items"] if i["sku"] not in shown][-3:]
    assert len(viewed) == 3
    for sku in viewed:  # product pages only: no /similar, no cart
        page = http.get(f"/v1/products/{sku}", headers=auth(shopper))
        assert page.status_code == 200 and page.json()["category"] == category
    related = {s for sku in viewed for s in skus(http.get(f"/v1/products/{sku}/similar"))}
    in_category = sum(i["category"] == category for i in before)
    deadline = time.monotonic() + 5
    while True:
        after = http.get("/v1/recommendations", **mine).json()["items"]
        now = sum(i["category"] == category for i in after)
        if now >= in_category + 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert now >= in_category + 3, (in_category, now)
    assert related & {i["sku"] for i in after}
    # Another (anonymous) caller still gets the popular items.
    assert skus(http.get("/v1/recommendations", params={"limit": 20})) == [i["sku"] for i in before]
