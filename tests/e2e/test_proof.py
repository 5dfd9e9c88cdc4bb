"""GET /v1/orders/{id}/proof over HTTP: garbage ids, authz (404 not 403), admin reads any."""

import uuid

import pytest

from tests.conftest import eventually
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.e2e

CHECKOUT = {
    "shipping_address": {
        "name": "Ana Souza",
        "line1": "Av. Paulista, 1000",
        "city": "São Paulo",
        "postal_code": "01310-100",
        "country": "BR",
    },
    "shipping_method": "standard",
    "payment": {"method": "card", "token": "pm_card_visa"},
}


@pytest.fixture(scope="module")
async def order(http, db):
    shopper = new_shopper(http)
    sku = await new_product(db, 3, price=1_990)
    headers = auth(shopper)
    assert http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers).is_success
    reply = http.post(
        "/v1/checkout", json=CHECKOUT, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert reply.status_code == 201, reply.text
    return {"id": reply.json()["id"], "headers": headers}


@pytest.mark.parametrize(
    "order_id",
    [
        "x",
        "not-an-order",
        "0" * 37,
        "%00",
        "'; DROP TABLE orders; --",
        "ABCDEFAB-0000-0000-0000-000000000000",
        "a" * 5000,
    ],
)
def test_garbage_ids_are_404_problems(http, order, order_id):
    reply = http.get(f"/v1/orders/{order_id}/proof", headers=order["headers"])
    # The middleware refuses control characters in a path (422) before any route runs.
    body = assert_problem(reply, {404, 414, 422})
    assert "anchoring" not in body


def test_unknown_order_is_a_plain_404(http, order):
    body = assert_problem(
        http.get(f"/v1/orders/{uuid.uuid4()}/proof", headers=order["headers"]), 404
    )
    assert "anchoring" not in body


def test_needs_a_login(http, order):
    assert_problem(http.get(f"/v1/orders/{order['id']}/proof"), 401)
    assert_problem(
        http.get(
            f"/v1/orders/{order['id']}/proof", headers={"Authorization": "Bearer not-a-token"}
        ),
        401,
    )


def test_someone_elses_order_is_404_not_403(http, order):
    other = new_shopper(http)
    body = assert_problem(http.get(f"/v1/orders/{order['id']}/proof", headers=auth(other)), 404)
    assert "anchoring" not in body


async def test_owner_and_admin_get_the_same_proof(http, order):
    url = f"/v1/orders/{order['id']}/proof"
    first = http.get(url, headers=order["headers"])
    if first.status_code == 404:
        assert assert_problem(first, 404)["anchoring"] == "pending"

    async def anchored() -> bool:
        return http.get(url, headers=order["headers"]).status_code == 200

    await eventually(anchored, timeout=60, interval=0.25)
    mine = http.get(url, headers=order["headers"]).json()
    admin = http.get(url, headers=new_admin(http)).json()
    assert admin == mine
    assert mine["leaf_data"].startswith(f"agora.order.v1|order_id={order['id']}|")
    assert all(p.startswith("0x") and len(p) == 66 for p in mine["path"])
