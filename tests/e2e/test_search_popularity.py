"""``sort=popularity`` follows orders within seconds on every replica (running system)."""

import time
import uuid

import pytest

from actors.writebehind import insert_outbox
from streams.events import PRODUCT_CREATED, make_event
from tests.conftest import eventually
from tests.e2e.shoppers import auth, new_product, new_shopper
from tests.e2e.test_checkout import body, key

pytestmark = pytest.mark.e2e

FOLLOW_S = 5.0  # a sale's re-read window is 0.5 s (more when the query is slow)


def _by_popularity(http, category: str) -> list[str]:
    reply = http.get("/v1/products", params={"category": category, "sort": "popularity"})
    assert reply.status_code == 200, reply.text
    return [p["sku"] for p in reply.json()["items"]]


def _every_replica_lists(http, category: str, expected: list[str]):
    async def check() -> bool:
        # Requests spread over the replicas: each one must list it so.
        return all(_by_popularity(http, category) == expected for _ in range(6))

    return check


async def test_a_bought_product_moves_first_and_back_when_the_order_is_cancelled(http, db):
    category = f"pop-{uuid.uuid4().hex[:10]}"
    skus = sorted([await new_product(db, 10, category=category) for _ in range(2)])
    async with db.acquire() as conn, conn.transaction():
        now_ms = int(time.time() * 1000)
        await insert_outbox(
            conn, [make_event(PRODUCT_CREATED, s, {"sku": s}, now_ms) for s in skus]
        )
    await eventually(_every_replica_lists(http, category, skus))  # no sales: SKU order
    less, bought = skus

    headers = auth(new_shopper(http))
    added = http.post("/v1/cart/items", json={"sku": bought, "quantity": 2}, headers=headers)
    assert added.status_code == 200, added.text
    reply = http.post("/v1/checkout", json=body(), headers={**headers, **key()})
    assert reply.status_code == 201, reply.text
    order = reply.json()
    assert order["status"] == "confirmed"
    await eventually(_every_replica_lists(http, category, [bought, less]), timeout=FOLLOW_S)

    cancelled = http.post(f"/v1/orders/{order['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    await eventually(_every_replica_lists(http, category, skus), timeout=FOLLOW_S)
