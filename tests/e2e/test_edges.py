"""Text PostgreSQL would refuse and times no date type can show stop at the edge (422),
change nothing, and never stall the shard that would have written them."""

import time
import uuid

import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.e2e

NUL = "\u0000"
ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


def checkout_body(address):
    return {
        "shipping_address": address,
        "shipping_method": "standard",
        "payment": {"method": "card", "token": "pm_card_visa"},
    }


def validation(reply) -> dict:
    body = assert_problem(reply, 422)
    assert body["type"].endswith("/validation"), body
    return body


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


@pytest.mark.parametrize("field", ["email", "name", "password"], ids=["email", "name", "password"])
async def test_register_refuses_nul(http, db, field):
    email = f"t-{uuid.uuid4().hex}@example.com"
    body = {"email": email, "password": "a-Long-enough-passw0rd", "name": "Ana"}
    body[field] = body[field][:3] + NUL + body[field][3:]
    validation(http.post("/v1/auth/register", json=body))
    assert (
        await db.fetchval("SELECT count(*) FROM users WHERE email LIKE $1", email[:10] + "%") == 0
    )


def test_token_endpoint_refuses_nul(http):
    reply = http.post(
        "/v1/auth/token", data={"grant_type": "password", "username": NUL, "password": "x"}
    )
    validation(reply)


@pytest.mark.parametrize(
    "patch",
    [
        {"name": "An" + NUL + "a"},
        {"preferences": {"lang": "pt" + NUL}},
        {"preferences": {"la" + NUL + "ng": "pt"}},
        {"name": "Ana\x1b[2J"},
    ],
    ids=["name", "preference-value", "preference-key", "escape"],
)
def test_profile_patch_refuses_control_characters(http, patch):
    shopper = new_shopper(http)
    before = http.get("/v1/me", headers=auth(shopper)).json()
    validation(http.patch("/v1/me", json=patch, headers=auth(shopper)))
    assert http.get("/v1/me", headers=auth(shopper)).json() == before


def test_profile_keeps_tabs_and_newlines_out_of_the_way(http):
    shopper = new_shopper(http)
    reply = http.patch("/v1/me", json={"preferences": {"note": "a\tb\nc"}}, headers=auth(shopper))
    assert reply.status_code == 200, reply.text
    assert reply.json()["preferences"]["note"] == "a\tb\nc"


@pytest.mark.parametrize(
    "path", ["/v1/products?q=%00", "/v1/products?category=a%01b", "/v1/products/ELE-000001%00"]
)
def test_query_and_path_refuse_control_characters(http, path):
    validation(http.get(path))


def _promotion(**changes):
    now = int(time.time())
    return {
        "id": f"edge-{uuid.uuid4().hex[:12]}",
        "kind": "percentage",
        "target": "category",
        "target_value": "edge-tests",
        "value": 1000,
        "starts_at": now,
        "ends_at": now + 3600,
        **changes,
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"label": "10%" + NUL + " off"},
        {"target_value": "edge" + NUL},
        {"ends_at": "9999-12-31T23:59:59-05:00"},
        {"ends_at": 10**15},
        {"starts_at": "0001-01-01T00:00:00+05:00"},
    ],
    ids=["label", "target-value", "ends-past-9999-by-offset", "ends-epoch-huge", "starts-before-1"],
)
def test_promotions_refuse_nul_and_unshowable_times(http, admin, changes):
    body = _promotion(**changes)
    validation(http.post("/v1/admin/promotions", json=body, headers=admin))
    page = http.get("/v1/admin/promotions", params={"limit": 100}, headers=admin)
    assert page.status_code == 200, page.text
    ids = set()
    while True:
        ids |= {p["id"] for p in page.json()["items"]}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
        page = http.get(
            "/v1/admin/promotions", params={"limit": 100, "cursor": cursor}, headers=admin
        )
        assert page.status_code == 200, page.text
    assert body["id"] not in ids


def test_the_last_second_of_year_9999_is_a_valid_end(http, admin):
    body = _promotion(ends_at="9999-12-31T23:59:59Z", target_value="edge-none")
    reply = http.post("/v1/admin/promotions", json=body, headers=admin)
    assert reply.status_code == 201, reply.text
    assert reply.json()["ends_at"] == "9999-12-31T23:59:59Z"
    assert http.get("/v1/admin/promotions", headers=admin).status_code == 200


@pytest.mark.parametrize("field", ["name", "line1", "city", "state", "line2"])
async def test_checkout_refuses_nul_in_the_address_and_the_shard_keeps_going(http, db, field):
    shopper = new_shopper(http)
    headers = auth(shopper)
    sku = await new_product(db, 3, price=4_990)
    added = http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers)
    assert added.status_code == 200, added.text
    cart = http.get("/v1/cart", headers=headers).json()
    bad = {**ADDRESS, field: "Rua" + NUL + "A"}
    key = uuid.uuid4().hex
    validation(
        http.post(
            "/v1/checkout", json=checkout_body(bad), headers={**headers, "Idempotency-Key": key}
        )
    )
    assert http.get("/v1/cart", headers=headers).json() == cart
    assert (
        await db.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", shopper["user_id"]) == 0
    )
    # The same shopper checks out with a clean address: nothing was stalled.
    reply = http.post(
        "/v1/checkout",
        json=checkout_body(ADDRESS),
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert reply.status_code in (201, 202), reply.text
