"""Units sold of the SKUs in named orders' lines, read from PostgreSQL (catalog_search).

A private PostgreSQL (pgserver), no running system: ``load_popularity`` answers
what the start-up load (``load_signals``) answers for the SKUs the orders name,
0 for a SKU whose every order was cancelled, and nothing for an unknown order.
"""

from __future__ import annotations

import json

import pytest

from cluster import db
from cluster.adapters import catalog_search

pytestmark = pytest.mark.integration

ORDERS = {  # order id -> (status, lines)
    "o-1": ("confirmed", {"A": 2, "B": 1}),
    "o-2": ("shipped", {"A": 3}),
    "o-3": ("cancelled", {"C": 4}),
    "o-4": ("refunded", {"B": 5}),
    "o-5": ("pending", {"A": 7}),
}


async def test_units_sold_of_the_named_orders_skus_match_the_full_load(private_database):
    conn = await db.connect(private_database)
    try:
        await conn.executemany(
            "INSERT INTO products (sku, name, description, category, price_minor)"
            " VALUES ($1, 'n', 'd', 'test', 100)",
            [(s,) for s in "ABCD"],
        )
        await conn.executemany(
            "INSERT INTO orders (order_id, user_id, status, step, data, version)"
            " VALUES ($1, 'u', $2, 'done', $3::text::jsonb, 1)",
            [
                (
                    order,
                    status,
                    json.dumps({"lines": [{"sku": s, "quantity": q} for s, q in lines.items()]}),
                )
                for order, (status, lines) in ORDERS.items()
            ],
        )
        sold = await catalog_search.load_popularity(conn, ["o-1", "o-3", "o-4", "o-9"])
        assert sold == {"A": 5.0, "B": 1.0, "C": 0.0}
        full = await catalog_search.load_signals(conn)
        assert {s: full[s].popularity for s in sold} == sold
        assert await catalog_search.load_popularity(conn, []) == {}
        assert await catalog_search.load_popularity(conn, ["o-9"]) == {}
    finally:
        await conn.close()
