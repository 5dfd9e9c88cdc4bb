"""Product reviews: write one (shoppers), read them (anyone), hide one (operators).

One review per shopper and product (409 for a second); ``verified_purchase``
when the shopper has a confirmed or shipped order holding the SKU. A new or
hidden review emits ``product.reviewed`` through the outbox, so every
replica re-reads the product's rating into its search index (``sort=rating``)
and its pages. Erasing an account anonymises its reviews
(``cluster.adapters.accounts.erase_user``).

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import Field

from actors.messages import now_ms
from actors.writebehind import insert_outbox
from cluster.adapters import reviews
from serve.auth.principal import ADMIN, PUBLIC, SHOPPER, Admin, User
from serve.problems import Problem
from serve.routers.audit import record_admin_action
from serve.runtime import runtime
from serve.schemas import Input, Sku
from streams.events import PRODUCT_REVIEWED, make_event, uuid7

router = APIRouter(tags=["reviews"])


# What a cursor may resume after: a review id as issued (``str(uuid7())``) and a helpful
# count within the column's ``integer``; anything else is a cursor we did not issue
# (before: a NUL in ``after`` or a count over 2**31 reached PostgreSQL as a 500).
_REVIEW_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_HELPFUL = 2**31 - 1


class NewReview(Input):
    rating: int = Field(ge=1, le=5)
    title: str = Field(min_length=1, max_length=120)
    body: str = Field(min_length=1, max_length=5000)


class HideReview(Input):
    reason: str = Field(min_length=3, max_length=500)


def _cursor(sort: str, review: dict[str, Any]) -> str:
    raw = json.dumps({"sort": sort, "helpful": review["helpful"], "after": review["id"]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str | None, sort: str) -> tuple[int, str] | None:
    if cursor is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        helpful, after, made_for = data["helpful"], data["after"], data["sort"]
        if isinstance(helpful, bool) or not isinstance(helpful, int) or not isinstance(after, str):
            raise ValueError
        if not 0 <= helpful <= MAX_HELPFUL or not _REVIEW_ID.match(after):
            raise ValueError
        if not isinstance(made_for, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(400, "invalid-cursor", "The cursor is not one this API issued.") from exc
    if made_for != sort:
        raise Problem(422, "cursor-sort-mismatch", f"The cursor belongs to sort={made_for}.")
    return helpful, after


async def _emit_reviewed(conn: Any, sku: str) -> None:
    s = runtime().settings
    event = make_event(PRODUCT_REVIEWED, sku, {"sku": sku}, now_ms())
    await insert_outbox(conn, [event], s.events_tenant, s.events_namespace)


@router.post(
    "/v1/products/{sku}/reviews",
    status_code=201,
    openapi_extra=SHOPPER,
    responses={404: {"description": "no such product"}, 409: {"description": "already reviewed"}},
)
async def create_review(sku: Sku, review: NewReview, principal: User) -> dict[str, Any]:
    """Review a product once: ``{rating: 1..5, title, body}`` -> 201 the review."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await reviews.product_is_listed(conn, sku):
            raise Problem(404, "not-found", "No such product.")
        made = await reviews.create(
            conn, str(uuid7()), sku, principal.user_id, review.rating, review.title, review.body
        )
        if made is None:
            raise Problem(409, "already-reviewed", "You have already reviewed this product.")
        await _emit_reviewed(conn, sku)
    return made


@router.get(
    "/v1/products/{sku}/reviews",
    openapi_extra=PUBLIC,
    responses={404: {"description": "no such product"}},
)
async def list_reviews(
    sku: Sku,
    sort: Literal["newest", "helpful"] = "newest",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> dict[str, Any]:
    """Visible reviews, newest or most helpful first, with the product's rating
    ``{average, count}``: ``{items, next_cursor, rating}``."""
    after = _after(cursor, sort)
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn:
        if not await reviews.product_is_listed(conn, sku):
            raise Problem(404, "not-found", "No such product.")
        rows = await reviews.page(conn, sku, sort, after, limit + 1)
        rating = await reviews.summary(conn, sku)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": rows,
        "next_cursor": _cursor(sort, rows[-1]) if more else None,
        "rating": rating,
    }


@router.post(
    "/v1/products/{sku}/reviews/{id}/helpful",
    openapi_extra=SHOPPER,
    responses={
        403: {"description": "your own review"},
        404: {"description": "no such visible review of this product"},
    },
)
async def vote_helpful(
    sku: Sku, id: Annotated[str, Path(min_length=1, max_length=64)], principal: User
) -> dict[str, Any]:
    """Find a review helpful: one vote per shopper and review (again: no change)
    -> ``{id, helpful}``, the review's helpful count (``sort=helpful``)."""
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        result = await reviews.vote_helpful(conn, sku, id, principal.user_id)
    if result == "not-found":
        raise Problem(404, "not-found", "No such review of this product.")
    if result == "own-review":
        raise Problem(403, "own-review", "You cannot vote for your own review.")
    return {"id": id, "helpful": result}


@router.post(
    "/v1/admin/reviews/{id}/hide",
    openapi_extra=ADMIN,
    tags=["admin"],
    responses={404: {"description": "no such review"}},
)
async def hide_review(
    id: Annotated[str, Path(max_length=64)], body: HideReview, admin: Admin
) -> dict[str, Any]:
    """Moderation: hide a review with a reason (it leaves lists and the rating)."""
    review_id = id
    rt = await runtime().ready()
    async with rt.pool.acquire() as conn, conn.transaction():
        sku = await reviews.hide(conn, review_id, body.reason, admin.user_id)
        if sku is None:
            raise Problem(404, "not-found", "No such review.")
        await _emit_reviewed(conn, sku)
        await record_admin_action(
            rt, admin, "review.hide", review_id, {"reason": body.reason, "sku": sku}, conn=conn
        )
    return {"id": review_id, "sku": sku, "hidden": True, "reason": body.reason}
