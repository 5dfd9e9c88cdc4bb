"""Warm reads never wait on PostgreSQL: counted in ``pg_stat_database``, over real HTTP.

A few hundred warm requests (product page, cart, add-to-cart) against the
running system must add (almost) no transaction to the agora database beyond
what it does anyway: the idle rate (the outbox relay polls, for one) is
measured over the same length of time just before and subtracted, and so are
the write-behind group commits of the cart shards: each batch is one
transaction, the outbox relay publishes its rows in one more and, having found
work, polls once more at once before it sleeps again (``BEHIND_PER_BATCH``).
Those are the writes going behind, not waits on the request path; their count
does not grow with the number of requests in a flush window.
"""

import asyncio
import time

import httpx
import pytest

from cluster.bootstrap import shard_directory

pytestmark = pytest.mark.integration

CARTS = 4
SKUS = 24
ROUNDS = 4  # each round: every SKU's page, one add and one cart read per (cart, SKU) slot
STATS_FLUSH_S = 1.5  # PostgreSQL publishes a backend's counters about once a second
PER_REQUEST_LIMIT = 0.05
BEHIND_PER_BATCH = 3


async def _xacts(db) -> int:
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
        )


async def _batches(handles) -> int:
    stats = await asyncio.gather(*(h.stats.remote() for h in handles))
    return sum(s["committed_batches"] + s["failed_batches"] for s in stats)


async def _ok(reply: httpx.Response) -> httpx.Response:
    assert reply.status_code == 200, reply.text
    return reply


async def test_warm_cart_product_page_and_add_to_cart_make_no_postgres_round_trip(
    system, base_url, db
):
    handles = shard_directory(system).all_handles("cart")
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        listed = (await _ok(await http.get("/v1/products", params={"limit": 100}))).json()
        skus = [p["sku"] for p in listed["items"]][:SKUS]
        assert len(skus) == SKUS
        tokens = []
        for _ in range(CARTS):  # each cart is created and touched once: warm from here on
            first = await _ok(await http.post("/v1/cart/items", json={"sku": skus[0]}))
            tokens.append(first.headers["x-cart-token"])
        for sku in skus:
            await _ok(await http.get(f"/v1/products/{sku}"))
        for token in tokens:
            await _ok(await http.get("/v1/cart", headers={"X-Cart-Token": token}))

        async def requests_for(cart: int, sku_index: int) -> int:
            token = {"X-Cart-Token": tokens[cart]}
            sku = skus[sku_index]
            await _ok(await http.get(f"/v1/products/{sku}"))
            await _ok(await http.post("/v1/cart/items", json={"sku": sku}, headers=token))
            await _ok(await http.get("/v1/cart", headers=token))
            return 3

        await asyncio.sleep(STATS_FLUSH_S)
        # The idle rate, over about as long as the load will take.
        idle_s = 6.0
        c0, b0, t0 = await _xacts(db), await _batches(handles), time.monotonic()
        await asyncio.sleep(idle_s)
        c1, b1, t1 = await _xacts(db), await _batches(handles), time.monotonic()
        idle_rate = ((c1 - c0) - BEHIND_PER_BATCH * (b1 - b0)) / (t1 - t0)

        sent = 0
        for _ in range(ROUNDS):
            for sku_index in range(SKUS):
                done = await asyncio.gather(
                    *(requests_for(cart, sku_index) for cart in range(CARTS))
                )
                sent += sum(done)
        await asyncio.sleep(STATS_FLUSH_S)
        c2, b2, t2 = await _xacts(db), await _batches(handles), time.monotonic()

    behind = b2 - b1
    net = (c2 - c1) - idle_rate * (t2 - t1) - BEHIND_PER_BATCH * behind
    per_request = net / sent
    assert sent >= 250
    assert per_request < PER_REQUEST_LIMIT, (
        f"{per_request:.3f} PostgreSQL transactions per warm request"
        f" ({c2 - c1} in {t2 - t1:.1f} s, idle {idle_rate:.1f}/s, {behind} write-behind batches,"
        f" {sent} requests)"
    )
