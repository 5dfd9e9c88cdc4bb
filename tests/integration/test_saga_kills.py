"""The checkout saga survives its shard being killed at any point.

Every order ends confirmed (paid, stock committed) or failed and fully
compensated (not charged, stock released): never charged without an order,
never stock held by a dead order.
"""

import asyncio
import random
import uuid

import httpx
import pytest
import ray

from actors.order.model import order_id_for
from serve.runtime import shard_directory
from tests.conftest import eventually
from tests.e2e.shoppers import auth, new_product, new_shopper
from tests.e2e.test_checkout import body

pytestmark = pytest.mark.integration


async def checkout_until_answered(client, headers, idem):
    """Retry the same request (same Idempotency-Key) through the shard's restart."""
    for _ in range(120):
        reply = await client.post(
            "/v1/checkout", json=body(), headers={**headers, "Idempotency-Key": idem}
        )
        if reply.status_code not in (500, 503):
            return reply
        await asyncio.sleep(0.25)
    raise AssertionError("checkout never answered")


async def _order_in_the_making(system, base_url, db):
    """A shopper with 2 units of a fresh 5-unit product in the cart, and the order's shard."""
    with httpx.Client(base_url=base_url, timeout=60) as sync:
        shopper = new_shopper(sync)
        sku = await new_product(db, 5)
        sync.post("/v1/cart/items", json={"sku": sku, "quantity": 2}, headers=auth(shopper))
    idem = uuid.uuid4().hex
    order_id = order_id_for(shopper["user_id"], idem)
    return shopper, sku, idem, order_id, shard_directory(system).get("order", order_id)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
async def test_killing_the_order_shard_mid_saga(system, base_url, db, delay):
    shopper, sku, idem, order_id, shard = await _order_in_the_making(system, base_url, db)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        first = asyncio.ensure_future(
            client.post(
                "/v1/checkout", json=body(), headers={**auth(shopper), "Idempotency-Key": idem}
            )
        )
        await asyncio.sleep(delay + random.random() * 0.05)
        ray.kill(shard, no_restart=False)
        await asyncio.gather(first, return_exceptions=True)
        reply = await checkout_until_answered(client, auth(shopper), idem)

        async def finished():
            got = await client.get(f"/v1/orders/{order_id}", headers=auth(shopper))
            return got.status_code == 200 and got.json()["status"] in ("confirmed", "failed")

        await eventually(finished, timeout=60, interval=0.25)
    order = (
        await httpx.AsyncClient(base_url=base_url).get(
            f"/v1/orders/{order_id}", headers=auth(shopper)
        )
    ).json()
    assert reply.status_code in (201, 402, 409), reply.text
    on_hand, reserved = await db.fetchrow(
        "SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku
    )
    paid = await db.fetchval("SELECT status FROM payments WHERE key = $1", order_id)
    assert reserved == 0
    if order["status"] == "confirmed":
        assert paid == "succeeded" and on_hand == 3
    else:
        assert paid != "succeeded" and on_hand == 5


@pytest.mark.parametrize("step", ["reserved", "charged"])
async def test_killing_the_order_shard_right_after_a_step(system, base_url, db, step):
    """Kill as soon as the saga's ``step`` is committed: between reserve and charge,
    or between charge and confirm."""
    shopper, sku, idem, order_id, shard = await _order_in_the_making(system, base_url, db)
    seen = None
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        first = asyncio.ensure_future(
            client.post(
                "/v1/checkout", json=body(), headers={**auth(shopper), "Idempotency-Key": idem}
            )
        )
        for _ in range(2000):
            seen = await db.fetchval("SELECT step FROM orders WHERE order_id = $1", order_id)
            if seen == step or first.done():
                break
            await asyncio.sleep(0.002)
        ray.kill(shard, no_restart=False)
        await asyncio.gather(first, return_exceptions=True)
        await checkout_until_answered(client, auth(shopper), idem)

        async def finished():
            got = await client.get(f"/v1/orders/{order_id}", headers=auth(shopper))
            return got.status_code == 200 and got.json()["status"] in ("confirmed", "failed")

        await eventually(finished, timeout=60, interval=0.25)
        order = (await client.get(f"/v1/orders/{order_id}", headers=auth(shopper))).json()
    on_hand, reserved = await db.fetchrow(
        "SELECT on_hand, reserved FROM inventory WHERE sku = $1", sku
    )
    paid = await db.fetchval("SELECT status FROM payments WHERE key = $1", order_id)
    intents = await db.fetchval("SELECT count(*) FROM payments WHERE key = $1", order_id)
    assert reserved == 0 and intents <= 1
    if order["status"] == "confirmed":
        assert paid == "succeeded" and on_hand == 3
    else:
        assert paid != "succeeded" and on_hand == 5
    print(f"killed after step {seen!r}; order ended {order['status']}")


async def test_a_restarted_shard_finishes_its_sagas_without_any_further_call(system, base_url, db):
    """Kill the shard mid-saga and never call that order again: the restarted shard
    resumes it by itself (from its constructor), so the order ends and no stock stays held."""
    shopper, sku, idem, order_id, shard = await _order_in_the_making(system, base_url, db)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        first = asyncio.ensure_future(
            client.post(
                "/v1/checkout", json=body(), headers={**auth(shopper), "Idempotency-Key": idem}
            )
        )
        seen = None
        for _ in range(4000):
            seen = await db.fetchval("SELECT step FROM orders WHERE order_id = $1", order_id)
            if seen in ("screened", "reserved") or first.done():
                break
            await asyncio.sleep(0.001)
        ray.kill(shard, no_restart=False)
        await asyncio.gather(first, return_exceptions=True)

    async def finished():
        row = await db.fetchrow(
            "SELECT o.status, i.reserved FROM orders o, inventory i"
            " WHERE o.order_id = $1 AND i.sku = $2",
            order_id,
            sku,
        )
        return row["status"] in ("confirmed", "failed") and row["reserved"] == 0

    await eventually(finished, timeout=60, interval=0.25)
    status = await db.fetchval("SELECT status FROM orders WHERE order_id = $1", order_id)
    paid = await db.fetchval("SELECT status FROM payments WHERE key = $1", order_id)
    on_hand = await db.fetchval("SELECT on_hand FROM inventory WHERE sku = $1", sku)
    if status == "confirmed":
        assert paid == "succeeded" and on_hand == 3, (paid, on_hand, seen)
    else:
        assert paid != "succeeded" and on_hand == 5, (paid, on_hand, seen)
