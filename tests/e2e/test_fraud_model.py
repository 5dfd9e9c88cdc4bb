"""The fraud model inside checkout: the saga asks FraudScorer (Serve) and acts on its decision."""

import json
import time

import pytest

from tests.conftest import eventually
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_product, new_shopper
from tests.e2e.test_checkout import ADDRESS, body, key

pytestmark = pytest.mark.e2e


async def fraud_of(db, user_id):
    """The order's fraud screening, once the order shard has written the order behind."""
    found = {}

    async def written():
        raw = await db.fetchval(
            "SELECT data->'fraud' FROM orders WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
            user_id,
        )
        found["fraud"] = json.loads(raw) if isinstance(raw, str) else raw
        return bool(found["fraud"])

    await eventually(written)
    return found["fraud"]


async def test_the_risky_order_is_held_or_blocked_by_the_model(http, db):
    shopper = new_shopper(http)
    sku = await db.fetchval(
        "SELECT sku FROM products WHERE sku NOT LIKE 'TST-%' ORDER BY price_minor DESC LIMIT 1"
    )
    added = http.post("/v1/cart/items", json={"sku": sku, "quantity": 40}, headers=auth(shopper))
    assert added.status_code in (200, 201), added.text
    abroad = {**body(method="express"), "shipping_address": {**ADDRESS, "country": "US"}}
    reply = http.post("/v1/checkout", json=abroad, headers={**auth(shopper), **key()})
    if reply.status_code == 202:
        assert reply.json()["status"] == "pending_review"
    else:
        assert_problem(reply, 403)
    fraud = await fraud_of(db, shopper["user_id"])
    assert fraud["decision"] in ("review", "block")
    assert fraud["reasons"][0].startswith("model:"), fraud  # the model decided, not the rules


async def test_a_normal_small_domestic_order_passes_the_model(http, db):
    shopper = new_shopper(http)
    sku = await new_product(db, 5, price=12_990)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=auth(shopper))
    reply = http.post("/v1/checkout", json=body(), headers={**auth(shopper), **key()})
    assert reply.status_code == 201, reply.text
    assert reply.json()["status"] == "confirmed"
    fraud = await fraud_of(db, shopper["user_id"])
    assert fraud["decision"] == "pass" and fraud["reasons"][0].startswith("model:"), fraud


async def test_the_category_of_the_goods_reaches_the_model(http, db):
    """The same one-unit domestic order by a brand-new account, R$ 4,200 of a resale-friendly
    category (electronics) vs of another: the live adapter reads the lines' categories from
    ``products`` and the model holds the first. At odd local hours (01-05, UTC-3) the model
    flags both, so there only the scores are compared."""
    screened = {}
    for category in ("electronics", "test"):
        shopper = new_shopper(http)
        sku = await new_product(db, 5, price=420_000, category=category)
        added = http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=auth(shopper))
        assert added.status_code in (200, 201), added.text
        reply = http.post("/v1/checkout", json=body(), headers={**auth(shopper), **key()})
        assert reply.status_code in (201, 202, 403), reply.text
        screened[category] = await fraud_of(db, shopper["user_id"])
        assert screened[category]["reasons"][0].startswith("model:"), screened[category]
    assert screened["electronics"]["decision"] in ("review", "block"), screened
    assert screened["electronics"]["score"] > screened["test"]["score"], screened
    if time.gmtime().tm_hour not in range(4, 9):
        assert screened["test"]["decision"] == "pass", screened
