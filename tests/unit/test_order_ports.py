"""The saga's pricing adapter reads product facts from PostgreSQL at most once per TTL."""

from __future__ import annotations

from typing import Any

from actors.order.model import CartLine, CartSnapshot, Priced
from cluster.adapters.order_ports import TABLES_TTL_S, PricingAdapter


class _Db:
    """An asyncpg-shaped pool: two products, no promotions, one shipping rate, no tax."""

    def __init__(self) -> None:
        self.product_reads: list[list[str]] = []
        self.category = "books"

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        if "FROM products" in sql:
            skus = list(args[0])
            self.product_reads.append(skus)
            return [
                {
                    "sku": sku,
                    "name": sku,
                    "description": "",
                    "category": self.category,
                    "price_minor": 1_000,
                    "currency": "BRL",
                    "weight_g": 500,
                    "attributes": {},
                    "images": [],
                    "available": 10,
                }
                for sku in skus
                if sku != "GONE"
            ]
        if "FROM shipping_rates" in sql:
            return [
                {
                    "method": "standard",
                    "region": "SP",
                    "base": 1_000,
                    "per_kg": 0,
                    "free_over": None,
                    "days": 5,
                }
            ]
        return []


CART = CartSnapshot("user:u1", (CartLine("A1", "A", 1_000, 2), CartLine("B1", "B", 500, 1)))


async def test_product_facts_are_read_once_per_ttl_and_only_for_unknown_skus() -> None:
    db, now = _Db(), [1_000_000]

    async def open_pool() -> _Db:
        return db

    pricing = PricingAdapter(open_pool, lambda: now[0])
    first = await pricing.price(CART, "u1", "standard", "BR", "SP", "01310-100")
    again = await pricing.price(CART, "u1", "standard", "BR", "SP", "01310-100")
    assert isinstance(first, Priced) and first.total == 2 * 1_000 + 500 + 1_000
    assert first == again and db.product_reads == [["A1", "B1"]]
    bigger = CartSnapshot(CART.cart_id, (*CART.lines, CartLine("C1", "C", 100, 1)))
    await pricing.price(bigger, "u1", "standard", "BR", "SP", "01310-100")
    assert db.product_reads == [["A1", "B1"], ["C1"]]  # only the one not known yet
    db.category = "toys"
    now[0] += int(TABLES_TTL_S * 1000)  # expired: read again, a change shows
    await pricing.price(CART, "u1", "standard", "BR", "SP", "01310-100")
    assert db.product_reads[-1] == ["A1", "B1"]
    assert pricing._facts["A1"][0].category == "toys"


async def test_an_unknown_sku_is_asked_for_again_and_never_cached() -> None:
    db = _Db()

    async def open_pool() -> _Db:
        return db

    pricing = PricingAdapter(open_pool, lambda: 1_000_000)
    gone = CartSnapshot("user:u1", (CartLine("GONE", "G", 1_000, 1),))
    for _ in range(2):
        await pricing.price(gone, "u1", "standard", "BR", "SP", "01310-100")
    assert db.product_reads == [["GONE"], ["GONE"]] and "GONE" not in pricing._facts
