"""Garbage to every route: a 4xx problem+json answer, and nothing changes."""

import pytest

from tests.e2e.problems import assert_problem

pytestmark = pytest.mark.e2e


@pytest.fixture()
def cart(http):
    token = http.get("/v1/cart").json()["cart_token"]
    headers = {"X-Cart-Token": token}
    reply = http.post("/v1/cart/items", json={"sku": "ELE-000001", "quantity": 2}, headers=headers)
    assert reply.status_code == 200
    return headers


def snapshot(http, headers):
    return http.get("/v1/cart", headers=headers).json()


BAD_BODIES = [
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"a string"',
    b'{"sku": null}',
    b'{"sku": "ELE-000001", "quantity": "2"}',
    b'{"sku": "ELE-000001", "quantity": 2.5}',
    b'{"sku": "ELE-000001", "quantity": true}',
    b'{"sku": "ELE-000001", "quantity": -1}',
    b'{"sku": "ELE-000001", "quantity": 0}',
    b'{"sku": "ELE-000001", "quantity": 100000000000000000000}',
    b'{"sku": "ELE-000001", "quantity": 1, "unit_price": 1}',
    b'{"sku": "\'; DROP TABLE carts; --", "quantity": 1}',
    b'{"sku": "' + b"A" * 5000 + b'", "quantity": 1}',
    b'{"sku": "\\u0000", "quantity": 1}',
    b'{"sku": "NOPE-000000", "quantity": 1}',
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_add_item_garbage(http, cart, body):
    before = snapshot(http, cart)
    reply = http.post(
        "/v1/cart/items", content=body, headers={**cart, "content-type": "application/json"}
    )
    assert_problem(reply, {400, 404, 422})
    assert snapshot(http, cart) == before


BAD_PATCH = [
    b"garbage",
    b"{}",
    b'{"quantity": "x"}',
    b'{"quantity": -5}',
    b'{"quantity": 1000}',
    b'{"quantity": 1, "sku": "X"}',
    b'{"quantity": 100}',
]


@pytest.mark.parametrize("body", BAD_PATCH, ids=range(len(BAD_PATCH)))
def test_set_quantity_garbage(http, cart, body):
    before = snapshot(http, cart)
    reply = http.patch(
        "/v1/cart/items/ELE-000001",
        content=body,
        headers={**cart, "content-type": "application/json"},
    )
    assert_problem(reply, {400, 422})
    assert snapshot(http, cart) == before


@pytest.mark.parametrize(
    "path",
    ["/v1/cart/items/not%20a%20sku", "/v1/cart/items/" + "X" * 300, "/v1/cart/items/ZZZ-000000"],
)
def test_delete_and_patch_garbage_paths(http, cart, path):
    before = snapshot(http, cart)
    assert_problem(http.delete(path, headers=cart), {404, 422})
    assert_problem(http.patch(path, json={"quantity": 1}, headers=cart), {404, 422})
    assert snapshot(http, cart) == before


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b", "x" * 199, "9kzQV-YPeqsr6abfcXtp0nNFcRTVpweUKB5Oy091WSg." + "A" * 22],
)
def test_forged_cart_tokens_are_refused_everywhere(http, token):
    headers = {"X-Cart-Token": token}
    assert_problem(http.get("/v1/cart", headers=headers), {400})
    assert_problem(http.post("/v1/cart/items", json={"sku": "ELE-000001"}, headers=headers), {400})
    assert_problem(
        http.patch("/v1/cart/items/ELE-000001", json={"quantity": 1}, headers=headers), {400}
    )
    assert_problem(http.delete("/v1/cart/items/ELE-000001", headers=headers), {400})


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "!!!"},
        {"cursor": "eyJ4IjogMX0"},
        {"category": "DROP TABLE"},
        {"min_price": -1},
        {"max_price": "cheap"},
        {"cursor": "A" * 500},
    ],
)
def test_product_list_garbage(http, params):
    assert_problem(http.get("/v1/products", params=params), {400, 422})


def test_oversized_body_is_refused(http, cart):
    before = snapshot(http, cart)
    body = b'{"sku": "ELE-000001", "quantity": 1, "pad": "' + b"x" * 100_000 + b'"}'
    reply = http.post(
        "/v1/cart/items", content=body, headers={**cart, "content-type": "application/json"}
    )
    assert_problem(reply, {413})
    assert snapshot(http, cart) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/cart"),
        ("DELETE", "/v1/products"),
        ("POST", "/v1/products/ELE-000001"),
        ("GET", "/v1/nothing-here"),
        ("GET", "/v2/products"),
    ],
)
def test_unknown_routes_and_methods_are_problems(http, method, path):
    assert_problem(http.request(method, path), {404, 405})
