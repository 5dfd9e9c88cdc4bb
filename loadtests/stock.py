"""Products with plenty of stock, made for one benchmark run (so runs never share stock)."""

from __future__ import annotations

import uuid


async def bench_products(prefix: str, count: int, price: int = 4990) -> list[str]:
    """Insert ``count`` products with 1,000,000 units each; returns their SKUs."""
    from cluster.db import connect
    from cluster.services import service_urls

    conn = await connect(service_urls().database)
    try:
        tag = f"{prefix}-{uuid.uuid4().hex[:6].upper()}"
        skus = [f"{tag}-{i:04d}" for i in range(count)]
        await conn.executemany(
            "INSERT INTO products (sku, name, description, category, price_minor)"
            " VALUES ($1, 'Bench item', 'Benchmark stock', 'bench', $2)",
            [(s, price) for s in skus],
        )
        await conn.executemany(
            "INSERT INTO inventory (sku, on_hand) VALUES ($1, 1000000)", [(s,) for s in skus]
        )
        return skus
    finally:
        await conn.close()
