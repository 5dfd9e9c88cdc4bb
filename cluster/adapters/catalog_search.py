"""PostgreSQL side of catalog search: the per-product signals the index sorts by.

The text of a product comes from ``pricing_store`` (the replica's product
facts); this adds what search needs besides: when it was created, whether it
is retired, its visible reviews' average and count, and units sold in
confirmed orders (popularity). Loaded in bulk at start-up and on a refresh,
and per SKU when a ``product.*`` event names it; popularity alone for the SKUs
of the orders an ``order.confirmed/cancelled/refunded`` event names (one query
for a window of such events). ``db`` is a pool or connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SOLD_STATUSES = ("confirmed", "shipped")

_SIGNALS = """
    SELECT p.sku, extract(epoch FROM p.created_at)::float8 AS created,
           p.retired_at IS NOT NULL AS retired,
           COALESCE(r.average, 0)::float8 AS rating, COALESCE(r.n, 0)::int AS rating_count,
           COALESCE(s.units, 0)::float8 AS popularity
      FROM products p
      LEFT JOIN (SELECT sku, avg(rating) AS average, count(*) AS n FROM reviews
                  WHERE hidden_at IS NULL GROUP BY sku) r USING (sku)
      LEFT JOIN (SELECT line->>'sku' AS sku, sum((line->>'quantity')::bigint) AS units
                   FROM orders, jsonb_array_elements(data->'lines') AS line
                  WHERE status = ANY($1::text[]) GROUP BY 1) s USING (sku)
"""


# Units sold of every SKU in the lines of orders $2: each answers, 0 when none of its
# units count as sold (the order was cancelled, say).
_POPULARITY = """
    WITH named AS (
        SELECT DISTINCT line->>'sku' AS sku
          FROM orders, jsonb_array_elements(data->'lines') AS line
         WHERE order_id = ANY($2::text[])
    )
    SELECT named.sku, COALESCE(sum((line->>'quantity')::bigint), 0)::float8 AS popularity
      FROM named
      LEFT JOIN (orders CROSS JOIN jsonb_array_elements(data->'lines') AS line)
        ON line->>'sku' = named.sku AND orders.status = ANY($1::text[])
     GROUP BY named.sku
"""


@dataclass(frozen=True)
class Signals:
    created: float
    retired: bool
    rating: float
    rating_count: int
    popularity: float


def _signals(row: Any) -> Signals:
    return Signals(
        created=float(row["created"]),
        retired=bool(row["retired"]),
        rating=round(float(row["rating"]), 4),
        rating_count=int(row["rating_count"]),
        popularity=float(row["popularity"]),
    )


async def load_signals(db: Any, skus: Sequence[str] | None = None) -> dict[str, Signals]:
    """Signals of ``skus`` (every product when None)."""
    if skus is None:
        rows = await db.fetch(_SIGNALS, list(SOLD_STATUSES))
    else:
        rows = await db.fetch(
            _SIGNALS + " WHERE p.sku = ANY($2::text[])", list(SOLD_STATUSES), list(skus)
        )
    return {row["sku"]: _signals(row) for row in rows}


async def load_popularity(db: Any, orders: Sequence[str]) -> dict[str, float]:
    """Units sold (popularity) of every SKU in the lines of ``orders``."""
    if not orders:
        return {}
    rows = await db.fetch(_POPULARITY, list(SOLD_STATUSES), list(orders))
    return {row["sku"]: float(row["popularity"]) for row in rows}
