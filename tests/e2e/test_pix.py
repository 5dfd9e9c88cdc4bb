"""Pix checkout over HTTP: BR Code, the sandbox PSP's signed webhook, expiry."""

import json
import time
import uuid

import httpx
import pytest

from cluster.adapters.pix import valid_br_code
from cluster.adapters.webhooks import sign
from cluster.services import pix_webhook_secret
from tests.conftest import eventually
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_product, new_shopper
from tests.e2e.test_checkout import ADDRESS, key

pytestmark = pytest.mark.e2e

PIX = {"shipping_address": ADDRESS, "shipping_method": "standard", "payment": {"method": "pix"}}


async def stock(db, sku):
    return tuple(await db.fetchrow("SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku))


async def test_pix_order_waits_then_the_signed_webhook_confirms_it(http, db, services):
    shopper = new_shopper(http)
    sku = await new_product(db, 5)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 2}, headers=auth(shopper))
    reply = http.post("/v1/checkout", json=PIX, headers={**auth(shopper), **key()})
    assert reply.status_code == 202, reply.text
    order = reply.json()
    assert order["status"] == "awaiting_payment"
    assert valid_br_code(order["pix"]["br_code"])
    assert order["pix"]["expires_at"] > time.time()
    assert await stock(db, sku) == (5, 2)
    paid = httpx.post(f"{services.pix}/v1/charges/{order['pix']['txid']}/pay", timeout=60)
    assert paid.status_code == 200, paid.text

    async def confirmed():
        got = http.get(f"/v1/orders/{order['id']}", headers=auth(shopper)).json()
        return got["status"] == "confirmed"

    await eventually(confirmed, timeout=30, interval=0.2)
    assert await stock(db, sku) == (3, 0)
    assert http.get("/v1/cart", headers=auth(shopper)).json()["lines"] == []


async def test_bad_webhooks_change_nothing(http, db):
    shopper = new_shopper(http)
    sku = await new_product(db, 5)
    http.post("/v1/cart/items", json={"sku": sku}, headers=auth(shopper))
    order = http.post("/v1/checkout", json=PIX, headers={**auth(shopper), **key()}).json()
    txid = order["pix"]["txid"]
    payload = json.dumps(
        {"type": "pix.paid", "txid": txid, "amount": order["totals"]["total"]["amount"]}
    )
    forged = sign(b"not-the-secret" * 3, payload.encode(), int(time.time()))
    cases = [
        {},
        {"Agora-Signature": "garbage"},
        {"Agora-Signature": forged},
        {"Agora-Signature": sign(pix_webhook_secret(), payload.encode(), int(time.time()) - 3600)},
    ]
    for headers in cases:
        reply = http.post("/v1/payments/webhooks/pix", content=payload, headers=headers)
        assert_problem(reply, 400)
    wrong_amount = json.dumps({"type": "pix.paid", "txid": txid, "amount": 1}).encode()
    reply = http.post(
        "/v1/payments/webhooks/pix",
        content=wrong_amount,
        headers={"Agora-Signature": sign(pix_webhook_secret(), wrong_amount, int(time.time()))},
    )
    assert_problem(reply, 422)
    assert_problem(http.post("/v1/payments/webhooks/stripe", content=payload), 404)
    garbage = b"{nope"
    reply = http.post(
        "/v1/payments/webhooks/pix",
        content=garbage,
        headers={"Agora-Signature": sign(pix_webhook_secret(), garbage, int(time.time()))},
    )
    assert_problem(reply, 400)
    got = http.get(f"/v1/orders/{order['id']}", headers=auth(shopper)).json()
    assert got["status"] == "awaiting_payment"
    assert await stock(db, sku) == (5, 1)


async def test_a_retried_webhook_confirms_an_order_whose_payment_the_gateway_recorded(http, db):
    """What an order shard killed between the gateway's ``mark_paid`` and storing the payment
    leaves: the ``payments`` row paid, the order awaiting. The PSP's retried webhook confirms
    the order (before, the gateway's repeat read as a wrong amount: 422, then it expired)."""
    shopper = new_shopper(http)
    sku = await new_product(db, 5)
    http.post("/v1/cart/items", json={"sku": sku}, headers=auth(shopper))
    order = http.post("/v1/checkout", json=PIX, headers={**auth(shopper), **key()}).json()
    assert order["status"] == "awaiting_payment"
    txid, total = order["pix"]["txid"], order["totals"]["total"]["amount"]
    recorded = await db.execute(
        "UPDATE payments SET status = 'succeeded' WHERE provider = 'pix' AND provider_id = $1"
        " AND status = 'pending'",
        txid,
    )
    assert recorded == "UPDATE 1"

    def webhook(amount):
        body = json.dumps({"type": "pix.paid", "txid": txid, "amount": amount}).encode()
        signature = sign(pix_webhook_secret(), body, int(time.time()))
        return http.post(
            "/v1/payments/webhooks/pix", content=body, headers={"Agora-Signature": signature}
        )

    assert_problem(webhook(total - 1), 422)  # another amount is still refused
    reply = webhook(total)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"received": True, "order_status": "confirmed"}
    got = http.get(f"/v1/orders/{order['id']}", headers=auth(shopper)).json()
    assert got["status"] == "confirmed"
    assert await stock(db, sku) == (4, 0)
    rows = await db.fetch("SELECT status FROM payments WHERE provider_id = $1", txid)
    assert [r["status"] for r in rows] == ["succeeded"]


async def test_unpaid_pix_orders_expire_and_release_stock(system, base_url, db):
    from actors.order.actor import OrderShard
    from actors.order.model import order_id_for
    from cluster.bootstrap import env_for

    with httpx.Client(base_url=base_url, timeout=60) as http:
        shopper = new_shopper(http)
        sku = await new_product(db, 4)
        http.post("/v1/cart/items", json={"sku": sku, "quantity": 3}, headers=auth(shopper))
    settings = system.model_copy(update={"pix_expiry_s": 2})
    name = f"test:order:{uuid.uuid4().hex[:8]}"
    env = env_for("order", settings)
    shard = OrderShard.options(name=name, namespace=system.ray_namespace).remote(name, env)
    order_id = order_id_for(shopper["user_id"], uuid.uuid4().hex)
    reply = await shard.checkout.remote(
        order_id, shopper["user_id"], "h", PIX, f"user:{shopper['user_id']}"
    )
    assert reply.order["status"] == "awaiting_payment"
    assert await stock(db, sku) == (4, 3)

    async def expired():
        return (await shard.get.remote(order_id)).order["status"] == "failed"

    await eventually(expired, timeout=30, interval=0.5)
    assert (await shard.get.remote(order_id)).order["failure"]["code"] == "payment-expired"
    assert await stock(db, sku) == (4, 0)
    import ray

    ray.kill(shard, no_restart=True)
