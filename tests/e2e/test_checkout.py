"""Checkout over HTTP: the saga with real inventory shards and a Stripe-compatible PSP."""

import asyncio
import time
import uuid

import httpx
import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.e2e

ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


def body(token="pm_card_visa", method="standard"):
    return {
        "shipping_address": ADDRESS,
        "shipping_method": method,
        "payment": {"method": "card", "token": token},
    }


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


@pytest.fixture(scope="module")
def shopper(http):
    return new_shopper(http)


async def stock(db, sku):
    row = await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku)
    return row["on_hand"], row["reserved"]


async def test_card_checkout_confirms_commits_stock_and_clears_cart(http, shopper, db):
    sku = await new_product(db, 5, price=12_990)
    headers = auth(shopper)
    assert (
        http.post("/v1/cart/items", json={"sku": sku, "quantity": 2}, headers=headers).status_code
        == 200
    )
    reply = http.post("/v1/checkout", json=body(), headers={**headers, **key()})
    assert reply.status_code == 201, reply.text
    order = reply.json()
    assert order["status"] == "confirmed"
    assert order["totals"]["subtotal"]["amount"] == 2 * 12_990
    assert (
        order["totals"]["total"]["amount"]
        >= order["totals"]["subtotal"]["amount"] - order["totals"]["discount_total"]["amount"]
    )
    assert [h["status"] for h in order["history"]] == ["pending", "confirmed"]
    assert await stock(db, sku) == (3, 0)
    assert http.get("/v1/cart", headers=headers).json()["lines"] == []
    payment = await db.fetchrow("SELECT status, amount FROM payments WHERE key = $1", order["id"])
    assert (
        payment["status"] == "succeeded" and payment["amount"] == order["totals"]["total"]["amount"]
    )
    listed = http.get("/v1/orders", headers=headers).json()["items"]
    assert order["id"] in [o["id"] for o in listed]
    detail = http.get(f"/v1/orders/{order['id']}", headers=headers).json()
    assert detail["status"] == "confirmed"
    types = {
        r["type"] for r in await db.fetch("SELECT type FROM outbox WHERE key = $1", order["id"])
    }
    assert {"order.created", "order.confirmed", "payment.processed"} <= types


async def test_declined_card_releases_stock(http, db):
    # A shopper of its own: a second card within the hour on one new account is what card
    # testing looks like, and the fraud model blocks it (see "Models" in docs/DECISIONS.md).
    headers = auth(new_shopper(http))
    sku = await new_product(db, 4)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 3}, headers=headers)
    reply = http.post(
        "/v1/checkout", json=body("pm_card_chargeDeclined"), headers={**headers, **key()}
    )
    problem = assert_problem(reply, 402)
    assert problem["type"].endswith("payment-declined")
    assert await stock(db, sku) == (4, 0)
    order = http.get(f"/v1/orders/{problem['order_id']}", headers=headers).json()
    assert order["status"] == "failed" and order["failure"]["code"] == "payment-declined"
    assert len(http.get("/v1/cart", headers=headers).json()["lines"]) == 1


async def test_idempotency_same_body_same_answer_different_body_422(http, db):
    shopper = new_shopper(http)
    headers = auth(shopper)
    sku = await new_product(db, 10)
    http.post("/v1/cart/items", json={"sku": sku}, headers=headers)
    k = key()
    first = http.post("/v1/checkout", json=body(), headers={**headers, **k})
    again = http.post("/v1/checkout", json=body(), headers={**headers, **k})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    other = http.post("/v1/checkout", json=body(method="express"), headers={**headers, **k})
    assert_problem(other, 422)
    assert await stock(db, sku) == (9, 0)
    assert (
        await db.fetchval("SELECT count(*) FROM payments WHERE key = $1", first.json()["id"]) == 1
    )


async def test_concurrent_duplicates_never_charge_twice(base_url, db):
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        shopper = await asyncio.to_thread(new_shopper, httpx.Client(base_url=base_url))
        headers = auth(shopper)
        sku = await new_product(db, 10)
        await client.post("/v1/cart/items", json={"sku": sku, "quantity": 2}, headers=headers)
        k = key()
        replies = await asyncio.gather(
            *[client.post("/v1/checkout", json=body(), headers={**headers, **k}) for _ in range(5)]
        )
    assert {r.status_code for r in replies} == {201}
    assert len({r.json()["id"] for r in replies}) == 1
    assert await stock(db, sku) == (8, 0)


async def test_n_concurrent_checkouts_for_k_units(base_url, db):
    k_units, n = 3, 7
    sku = await new_product(db, k_units)
    with httpx.Client(base_url=base_url, timeout=60) as sync:
        shoppers = [new_shopper(sync) for _ in range(n)]
        for s in shoppers:
            assert (
                sync.post("/v1/cart/items", json={"sku": sku}, headers=auth(s)).status_code == 200
            )
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        replies = await asyncio.gather(
            *[
                client.post("/v1/checkout", json=body(), headers={**auth(s), **key()})
                for s in shoppers
            ]
        )
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] * k_units + [409] * (n - k_units), [r.text for r in replies]
    for r in replies:
        if r.status_code == 409:
            problem = r.json()
            assert problem["type"].endswith("out-of-stock")
            assert problem["lines"][0]["sku"] == sku
    assert await stock(db, sku) == (0, 0)


async def test_cancel_refunds_and_restocks(http, db):
    shopper = new_shopper(http)
    headers = auth(shopper)
    sku = await new_product(db, 5)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 2}, headers=headers)
    order = http.post("/v1/checkout", json=body(), headers={**headers, **key()}).json()
    assert await stock(db, sku) == (3, 0)
    cancelled = http.post(f"/v1/orders/{order['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert await stock(db, sku) == (5, 0)
    again = http.post(f"/v1/orders/{order['id']}/cancel", headers=headers)
    assert again.status_code == 200
    assert await stock(db, sku) == (5, 0)
    refunds = await db.fetchval("SELECT count(*) FROM refunds WHERE payment_key = $1", order["id"])
    assert refunds == 1


def test_checkout_garbage_changes_nothing(http, shopper):
    headers = auth(shopper)
    cases = [
        ({}, body(), 400),
        (key(), {"shipping_method": "standard"}, 422),
        (key(), {**body(), "total": 1}, 422),
        (key(), body(token="4242424242424242"), 422),
        (key(), {**body(), "note": "card 4242 4242 4242 4242"}, 422),
        (key(), body(method="teleport"), 422),
        (key(), {**body(), "payment": {"method": "pix", "token": "pm_card_visa"}}, 422),
        (key(), {**body(), "payment": {"method": "boleto"}}, 422),
        (key(), {**body(), "payment": {"method": "card", "token": "tok; DROP"}}, 422),
    ]
    before = http.get("/v1/orders", headers=headers).json()["items"]
    for extra, payload, status in cases:
        assert_problem(
            http.post("/v1/checkout", json=payload, headers={**headers, **extra}), status
        )
    assert_problem(
        http.post(
            "/v1/checkout",
            content=b"{nope",
            headers={**headers, **key(), "content-type": "application/json"},
        ),
        400,
    )
    assert http.get("/v1/orders", headers=headers).json()["items"] == before


def test_orders_are_private(http, shopper):
    other = new_shopper(http)
    assert_problem(http.get(f"/v1/orders/{uuid.uuid4()}", headers=auth(shopper)), 404)
    assert_problem(http.get("/v1/orders/not-an-id", headers=auth(shopper)), 404)
    assert_problem(http.post(f"/v1/orders/{uuid.uuid4()}/cancel", headers=auth(other)), 404)
    assert_problem(http.get("/v1/orders", params={"cursor": "!!"}, headers=auth(other)), 400)
    assert_problem(http.get("/v1/orders", params={"limit": 0}, headers=auth(other)), 422)


async def test_coupon_total_limit_holds_under_concurrent_checkouts(http, base_url, db):
    """10 shoppers check out at once with a coupon of max_uses_total=3: exactly 3 orders
    use it; the others fail with 422 coupon-exhausted (DECISIONS.md, Checkout saga v2)."""
    admin = new_admin(http)
    code = f"RACE{uuid.uuid4().hex[:10].upper()}"
    now = int(time.time())
    created = http.post(
        "/v1/admin/coupons",
        json={
            "code": code,
            "kind": "percentage",
            "value": 1000,
            "starts_at": now - 60,
            "ends_at": now + 3600,
            "max_uses_total": 3,
            "stackable": True,
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    sku = await new_product(db, 50)
    shoppers = [new_shopper(http) for _ in range(10)]
    for s in shoppers:
        assert http.post("/v1/cart/items", json={"sku": sku}, headers=auth(s)).status_code == 200
        applied = http.post("/v1/cart/coupon", json={"code": code}, headers=auth(s))
        assert applied.status_code == 200, applied.text
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        replies = await asyncio.gather(
            *[
                client.post("/v1/checkout", json=body(), headers={**auth(s), **key()})
                for s in shoppers
            ]
        )
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] * 3 + [422] * 7, [r.text for r in replies]
    for r in replies:
        if r.status_code == 201:
            assert r.json()["totals"]["coupon"] == code
        else:
            assert r.json()["type"].endswith("/coupon-exhausted"), r.text
    assert await db.fetchval("SELECT uses_total FROM coupons WHERE code = $1", code) == 3
    assert await db.fetchval("SELECT count(*) FROM coupon_uses WHERE code = $1", code) == 3
    assert await stock(db, sku) == (47, 0)
