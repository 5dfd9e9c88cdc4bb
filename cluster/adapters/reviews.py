"""Reviews in PostgreSQL (migration 0009): write, list, moderate, anonymise on erasure.

Every function takes a connection or pool; the caller decides the transaction
(and writes the ``product.reviewed`` outbox event in the same one). Rows come
back as plain dicts.
"""

from __future__ import annotations

from typing import Any

from cluster.adapters.catalog_search import SOLD_STATUSES

_COLUMNS = (
    "review_id, sku, author_name, rating, title, body, verified_purchase, helpful,"
    " created_at, hidden_at IS NOT NULL AS hidden"
)


def _review(row: Any) -> dict[str, Any]:
    return {
        "id": row["review_id"],
        "sku": row["sku"],
        "author": row["author_name"] or None,
        "rating": int(row["rating"]),
        "title": row["title"],
        "body": row["body"],
        "verified_purchase": bool(row["verified_purchase"]),
        "helpful": int(row["helpful"]),
        "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
    }


async def product_is_listed(conn: Any, sku: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM products WHERE sku = $1 AND retired_at IS NULL)", sku
        )
    )


async def create(
    conn: Any, review_id: str, sku: str, user_id: str, rating: int, title: str, body: str
) -> dict[str, Any] | None:
    """Insert the shopper's review (verified when they have a confirmed order with ``sku``);
    None when they already reviewed it."""
    row = await conn.fetchrow(
        "INSERT INTO reviews (review_id, sku, user_id, author_name, rating, title, body,"
        " verified_purchase)"
        " SELECT $1, $2, $3, COALESCE((SELECT split_part(name, ' ', 1) FROM users"
        "   WHERE user_id = $3), ''), $4, $5, $6,"
        " EXISTS (SELECT 1 FROM orders o, jsonb_array_elements(o.data->'lines') line"
        "   WHERE o.user_id = $3 AND o.status = ANY($7::text[]) AND line->>'sku' = $2)"
        " ON CONFLICT (sku, user_id) WHERE user_id IS NOT NULL DO NOTHING"
        f" RETURNING {_COLUMNS}",
        review_id,
        sku,
        user_id,
        rating,
        title,
        body,
        list(SOLD_STATUSES),
    )
    return _review(row) if row is not None else None


async def page(
    conn: Any, sku: str, sort: str, after: tuple[int, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Visible reviews of ``sku``: ``newest`` (review ids are UUIDv7, time-ordered) or
    ``helpful`` (helpful votes, then newest); keyset ``after`` = (helpful, review id)."""
    if sort == "helpful":
        order = "helpful DESC, review_id DESC"
        keyset = "($3::int IS NULL OR (helpful, review_id) < ($3::int, $4::text))"
    else:
        order = "review_id DESC"
        keyset = "($3::int IS NULL OR review_id < $4::text)"
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM reviews WHERE sku = $1 AND hidden_at IS NULL AND {keyset}"
        f" ORDER BY {order} LIMIT $2",
        sku,
        limit,
        after[0] if after else None,
        after[1] if after else None,
    )
    return [_review(r) for r in rows]


async def summary(conn: Any, sku: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT COALESCE(avg(rating), 0)::float8 AS average, count(*) AS n FROM reviews"
        " WHERE sku = $1 AND hidden_at IS NULL",
        sku,
    )
    return {"average": round(float(row["average"]), 2), "count": int(row["n"])}


async def hide(conn: Any, review_id: str, reason: str, admin_id: str) -> str | None:
    """Hide a review with the operator's reason; the review's SKU, or None if unknown."""
    sku: str | None = await conn.fetchval(
        "UPDATE reviews SET hidden_at = COALESCE(hidden_at, now()), hidden_reason = $2,"
        " hidden_by = $3 WHERE review_id = $1 RETURNING sku",
        review_id,
        reason,
        admin_id,
    )
    return sku


async def vote_helpful(conn: Any, sku: str, review_id: str, user_id: str) -> int | str:
    """The shopper finds the review helpful: its helpful count after the vote (a second
    vote counts once), ``"not-found"`` (unknown, hidden or another product's review) or
    ``"own-review"``. Migration 0012; the caller holds the transaction."""
    row = await conn.fetchrow(
        "SELECT user_id, helpful FROM reviews"
        " WHERE review_id = $1 AND sku = $2 AND hidden_at IS NULL FOR UPDATE",
        review_id,
        sku,
    )
    if row is None:
        return "not-found"
    if row["user_id"] == user_id:
        return "own-review"
    voted = await conn.fetchval(
        "INSERT INTO review_votes (review_id, user_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true",
        review_id,
        user_id,
    )
    if not voted:
        return int(row["helpful"])
    helpful: int = await conn.fetchval(
        "UPDATE reviews SET helpful = helpful + 1 WHERE review_id = $1 RETURNING helpful",
        review_id,
    )
    return helpful


async def anonymise_author(conn: Any, user_id: str) -> list[str]:
    """Erasure: the author's reviews keep their stars and text but lose who wrote them."""
    await conn.execute("DELETE FROM review_votes WHERE user_id = $1", user_id)
    rows = await conn.fetch(
        "UPDATE reviews SET user_id = NULL, author_name = '' WHERE user_id = $1 RETURNING sku",
        user_id,
    )
    return sorted({r["sku"] for r in rows})
