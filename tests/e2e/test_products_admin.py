"""Product admin over HTTP: validation, authz, events, and every replica following within 1 s."""

import asyncio
import time
import uuid

import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_shopper

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


def _new_sku() -> str:
    return f"ADM-{uuid.uuid4().hex[:10].upper()}"


def _body(sku: str, word: str) -> dict:
    return {
        "sku": sku,
        "name": f"Quokka {word} Trail Lantern",
        "description": "A lantern for the trail, made for tests.",
        "category": "sports",
        "price": {"amount": 12_990, "currency": "BRL"},
        "attributes": {"brand": "Quokka", "colour": "olive", "level": "beginner"},
    }


def _search(http, q: str) -> list[str]:
    reply = http.get("/v1/products", params={"q": q})
    assert reply.status_code == 200, reply.text
    return [p["sku"] for p in reply.json()["items"]]


async def _within(check, seconds: float = 1.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not visible in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_create_change_and_retire_are_followed_by_search_and_pages(http, admin):
    sku, word, new_word = _new_sku(), f"zk{uuid.uuid4().hex[:8]}", f"zm{uuid.uuid4().hex[:8]}"
    created = http.post("/v1/admin/products", json=_body(sku, word), headers=admin)
    assert created.status_code == 201, created.text
    product = created.json()
    assert product["sku"] == sku and product["price"] == {"amount": 12_990, "currency": "BRL"}
    await _within(lambda: _search(http, word) == [sku])
    await _within(lambda: http.get(f"/v1/products/{sku}").status_code == 200)

    again = http.post("/v1/admin/products", json=_body(sku, word), headers=admin)
    assert_problem(again, 409)

    changed = http.patch(
        f"/v1/admin/products/{sku}",
        json={"name": f"Quokka {new_word} Lantern", "price": {"amount": 9_990, "currency": "BRL"}},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["price"]["amount"] == 9_990
    await _within(lambda: _search(http, new_word) == [sku] and _search(http, word) == [])
    await _within(lambda: http.get(f"/v1/products/{sku}").json()["price"]["amount"] == 9_990)
    for _ in range(6):  # requests spread over the replicas: each one followed
        assert _search(http, new_word) == [sku]

    retired = http.delete(f"/v1/admin/products/{sku}", headers=admin)
    assert retired.status_code == 204
    await _within(lambda: _search(http, new_word) == [])
    await _within(lambda: http.get(f"/v1/products/{sku}").status_code == 404)
    assert_problem(http.delete(f"/v1/admin/products/{sku}", headers=admin), 404)
    assert_problem(http.patch(f"/v1/admin/products/{sku}", json={"name": "x"}, headers=admin), 404)


def test_admin_product_routes_need_an_operator(http):
    shopper = auth(new_shopper(http))
    sku = _new_sku()
    for headers, status in (({}, 401), (shopper, 403)):
        assert_problem(
            http.post("/v1/admin/products", json=_body(sku, "x"), headers=headers), status
        )
        assert_problem(
            http.patch("/v1/admin/products/ELE-000001", json={"name": "x"}, headers=headers), status
        )
        assert_problem(http.delete("/v1/admin/products/ELE-000001", headers=headers), status)
    assert http.get("/v1/products/ELE-000001").status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"sku": "lower-case"},
        {"sku": "A" * 40},
        {"price": {"amount": 0, "currency": "BRL"}},
        {"price": {"amount": 10.5, "currency": "BRL"}},
        {"price": {"amount": 100, "currency": "USD"}},
        {"price": 100},
        {"category": "Not A Slug"},
        {"attributes": {"Bad Key": 1}},
        {"attributes": {"nested": {"a": 1}}},
        {"attributes": {"long": "x" * 300}},
        {"name": ""},
        {"name": "x" * 500},
        {"unknown": 1},
    ],
)
def test_bad_product_bodies_are_422_and_change_nothing(http, admin, change):
    body = {**_body(_new_sku(), "bad"), **change}
    assert_problem(http.post("/v1/admin/products", json=body, headers=admin), 422)
    if "sku" not in change:
        assert http.get(f"/v1/products/{body['sku']}").status_code == 404


def test_bad_patches_are_422(http, admin):
    for change in ({"price": {"amount": -1}}, {"category": "UPPER"}, {"sku": "X-1"}):
        reply = http.patch("/v1/admin/products/ELE-000001", json=change, headers=admin)
        assert_problem(reply, 422)
    assert_problem(http.patch("/v1/admin/products/no%20such", json={}, headers=admin), 422)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"attributes": {"waterproof": True}}, "body.attributes.waterproof"),
        ({"attributes": {"level": "expert"}}, "body.attributes.level"),
        ({"attributes": {"brand": 12}}, "body.attributes.brand"),
        ({"category": "shoes", "attributes": {"size": "42"}}, "body.attributes.size"),
        ({"category": "shoes", "attributes": {"size": 42.0}}, "body.attributes.size"),
        ({"category": "beauty", "attributes": {"vegan": "yes"}}, "body.attributes.vegan"),
        ({"category": "no-such-category", "attributes": {}}, "body.category"),
    ],
)
def test_attributes_that_break_the_category_schema_are_422_per_field(http, admin, change, field):
    body = {**_body(_new_sku(), "schema"), **change}
    reply = http.post("/v1/admin/products", json=body, headers=admin)
    assert_problem(reply, 422)
    assert field in [e["field"] for e in reply.json()["errors"]]
    assert http.get(f"/v1/products/{body['sku']}").status_code == 404


def test_patches_are_checked_against_the_resulting_category(http, admin):
    sku = _new_sku()
    assert (
        http.post("/v1/admin/products", json=_body(sku, "patch"), headers=admin).status_code == 201
    )
    bad = http.patch(
        f"/v1/admin/products/{sku}", json={"attributes": {"level": "pro"}}, headers=admin
    )
    assert_problem(bad, 422)
    assert [e["field"] for e in bad.json()["errors"]] == ["body.attributes.level"]
    # Moving to shoes while keeping sports' "level" does not fit shoes: refused, nothing changed.
    moved = http.patch(f"/v1/admin/products/{sku}", json={"category": "shoes"}, headers=admin)
    assert_problem(moved, 422)
    assert "attributes.level" in [e["field"] for e in moved.json()["errors"]]
    ok = http.patch(
        f"/v1/admin/products/{sku}",
        json={"category": "shoes", "attributes": {"size": 41, "gender": "unisex"}},
        headers=admin,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["category"] == "shoes"
    assert ok.json()["attributes"] == {"size": 41, "gender": "unisex"}


def test_category_schema_route(http, admin):
    reply = http.get("/v1/admin/categories/shoes/schema", headers=admin)
    assert reply.status_code == 200, reply.text
    assert reply.json()["attributes"]["size"] == {"type": "integer", "min": 16, "max": 50}
    assert_problem(http.get("/v1/admin/categories/no-such/schema", headers=admin), 404)
    assert_problem(http.get("/v1/admin/categories/Bad%20Slug/schema", headers=admin), 422)
    assert_problem(http.get("/v1/admin/categories/shoes/schema"), 401)
    shopper = auth(new_shopper(http))
    assert_problem(http.get("/v1/admin/categories/shoes/schema", headers=shopper), 403)


@pytest.mark.parametrize("sku", ["not%20a%20sku", "x" * 200, "%27%3B--", "ELE-000001%0A", "%C3%A7"])
def test_garbage_skus_are_problems_on_every_product_route(http, admin, sku):
    for reply in (
        http.get(f"/v1/products/{sku}"),
        http.get(f"/v1/products/{sku}/reviews"),
        http.delete(f"/v1/admin/products/{sku}", headers=admin),
        http.patch(f"/v1/admin/products/{sku}", json={"name": "x"}, headers=admin),
    ):
        assert_problem(reply, {400, 404, 422})


@pytest.mark.parametrize("content", [b"not json", b"[]", b'"x"', b"null", b"{", b"{}"])
def test_bodies_that_are_not_a_product_are_problems(http, admin, content):
    headers = {**admin, "Content-Type": "application/json"}
    status = {400} if content in (b"not json", b"{") else {422}  # 400 malformed-json
    assert_problem(http.post("/v1/admin/products", content=content, headers=headers), status)
    if content != b"{}":  # an empty PATCH is a valid no-op
        reply = http.patch("/v1/admin/products/ELE-000001", content=content, headers=headers)
        assert_problem(reply, status)
