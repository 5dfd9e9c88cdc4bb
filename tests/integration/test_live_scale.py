"""``agora scale cart=N`` on the running system while shoppers add to their carts.

Several concurrent HTTP clients add items to many anonymous carts through the
API while the real command rescales the cart shards up, then back down. Every
acknowledged add must be in its cart afterwards, read through the API and in
PostgreSQL; at most 0.1% of the requests may fail. The figures go to
docs/PERFORMANCE.md.
"""

import asyncio
import random
import re
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from cluster.services import cart_token_secret
from serve.carttoken import CartTokens
from tests.conftest import eventually

pytestmark = pytest.mark.integration

SKUS = ("ELE-000001", "BOO-000001", "TOY-000001", "GAR-000001", "PET-000001")
CARTS = 120
CLIENTS = 6
MAX_ERROR_RATE = 0.001


def agora_scale(*targets: str) -> tuple[str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "scale", *targets],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, time.monotonic() - started


async def cart_shards(db) -> int:
    stored = await db.fetchval("SELECT shards FROM shard_rings WHERE kind = 'cart'")
    return stored or 0


@pytest.fixture
async def restore_cart_ring(db, system):
    """Whatever happens, the cart ring ends as it began (it is stored and outlives runs)."""
    before = await cart_shards(db) or system.cart_shards
    yield before
    if await cart_shards(db) not in (0, before) or await db.fetchval(
        "SELECT previous FROM shard_rings WHERE kind = 'cart'"
    ):
        await asyncio.to_thread(agora_scale, f"cart={before}")


async def test_carts_rescale_live_under_traffic_without_losing_an_add(
    system, base_url, db, restore_cart_ring
):
    before = restore_cart_ring
    more = before + 4
    # Paced under the per-client-address API limit (every client here is 127.0.0.1).
    rate = min(80.0, system.api_requests_per_ip / system.api_requests_period_s * 0.6)
    tokens = CartTokens(cart_token_secret(system))
    acked: dict[str, Counter[str]] = {}
    failures: list[str] = []
    latencies: dict[str, list[float]] = {"before": [], "scaling": [], "between": []}
    phase = ["before"]
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        carts = []
        for _ in range(CARTS):
            reply = await http.get("/v1/cart")
            assert reply.status_code == 200, reply.text
            carts.append(reply.json()["cart_token"])
        await asyncio.sleep(len(carts) / rate)  # the limiter's bucket refills first

        async def shopper(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                token, sku = rng.choice(carts), rng.choice(SKUS)
                started = time.monotonic()
                try:
                    reply = await http.post(
                        "/v1/cart/items",
                        json={"sku": sku, "quantity": 1},
                        headers={"X-Cart-Token": token},
                    )
                    ok = reply.status_code == 200
                    what = f"{reply.status_code} {reply.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, what = False, f"{type(exc).__name__}: {exc}"
                latencies[phase[0]].append(time.monotonic() - started)
                if ok:
                    acked.setdefault(token, Counter())[sku] += 1
                else:
                    failures.append(what)
                await asyncio.sleep(max(0.0, CLIENTS / rate - (time.monotonic() - started)))

        shoppers = [asyncio.create_task(shopper(i)) for i in range(CLIENTS)]
        await asyncio.sleep(4)
        phase[0] = "scaling"
        up_out, up_s = await asyncio.to_thread(agora_scale, f"cart={more}")
        phase[0] = "between"
        await asyncio.sleep(3)
        phase[0] = "scaling"
        down_out, down_s = await asyncio.to_thread(agora_scale, f"cart={before}")
        phase[0] = "between"
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*shoppers)

        sent = sum(sum(c.values()) for c in acked.values()) + len(failures)
        rate_failed = len(failures) / sent
        p95 = {
            name: sorted(values)[int(len(values) * 0.95)] * 1000 if values else 0.0
            for name, values in latencies.items()
        }
        handoffs = re.findall(r"handed off in (\d+) ms", up_out + down_out)
        print(
            f"\nlive scale cart {before}->{more}->{before}: {sent} adds, {len(failures)} failed"
            f" ({rate_failed:.4%}); p95 ms before/while scaling/between"
            f" {p95['before']:.0f}/{p95['scaling']:.0f}/{p95['between']:.0f}"
            f" (requests {', '.join(str(len(v)) for v in latencies.values())});"
            f" commands {up_s:.1f}s/{down_s:.1f}s,"
            f" handoffs {handoffs} ms\n{up_out}{down_out}"
        )
        assert sent > 300
        assert rate_failed <= MAX_ERROR_RATE, failures[:5]
        assert f"{before} -> {more} shards" in up_out and f"{more} -> {before} shards" in down_out

        # Every acknowledged add is in its cart (exactly, where no request of it failed).
        exact = not failures
        for token, counts in acked.items():
            reply = await http.get("/v1/cart", headers={"X-Cart-Token": token})
            assert reply.status_code == 200, reply.text
            seen = {line["sku"]: line["quantity"] for line in reply.json()["lines"]}
            for sku, count in counts.items():
                assert seen.get(sku, 0) == count if exact else seen.get(sku, 0) >= count

    async def persisted() -> bool:
        for token, counts in acked.items():
            row = await db.fetchrow(
                "SELECT data FROM carts WHERE cart_id = $1", tokens.cart_id(token)
            )
            if row is None:
                return False
            stored = {line["sku"]: line["quantity"] for line in row["data"]["lines"]}
            if any(stored.get(sku, 0) < count for sku, count in counts.items()):
                return False
        return True

    await eventually(persisted, timeout=10, interval=0.2)
    assert await db.fetchval("SELECT previous FROM shard_rings WHERE kind = 'cart'") is None
    assert await cart_shards(db) == before
