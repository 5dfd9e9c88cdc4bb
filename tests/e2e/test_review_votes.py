"""Helpful votes on reviews: one per shopper and review, never your own, and sort=helpful."""

import uuid

import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_shopper

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sku(http):
    sku = f"VOT-{uuid.uuid4().hex[:10].upper()}"
    body = {
        "sku": sku,
        "name": "Quokka Voting Mug",
        "description": "A mug for review vote tests.",
        "category": "sports",
        "price": {"amount": 2_990, "currency": "BRL"},
    }
    reply = http.post("/v1/admin/products", json=body, headers=new_admin(http))
    assert reply.status_code == 201, reply.text
    return sku


def _review(http, sku, shopper, title):
    body = {"rating": 4, "title": title, "body": "Fine."}
    reply = http.post(f"/v1/products/{sku}/reviews", json=body, headers=auth(shopper))
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _vote(http, sku, review_id, shopper):
    return http.post(f"/v1/products/{sku}/reviews/{review_id}/helpful", headers=auth(shopper))


def test_votes_count_once_per_shopper_and_order_sort_helpful(http, sku):
    alice, bob, carol, dan = (new_shopper(http) for _ in range(4))
    older = _review(http, sku, alice, "Older")
    newer = _review(http, sku, bob, "Newer")
    newest = http.get(f"/v1/products/{sku}/reviews", params={"sort": "helpful"}).json()
    assert [r["id"] for r in newest["items"]] == [newer, older]  # no votes: newest first

    first = _vote(http, sku, older, carol)
    assert first.status_code == 200, first.text
    assert first.json() == {"id": older, "helpful": 1}
    again = _vote(http, sku, older, carol)
    assert again.status_code == 200 and again.json()["helpful"] == 1  # idempotent
    assert _vote(http, sku, older, dan).json()["helpful"] == 2
    assert _vote(http, sku, older, bob).json()["helpful"] == 3
    assert _vote(http, sku, newer, carol).json()["helpful"] == 1

    helpful = http.get(f"/v1/products/{sku}/reviews", params={"sort": "helpful"}).json()
    assert [(r["id"], r["helpful"]) for r in helpful["items"]] == [(older, 3), (newer, 1)]
    one = http.get(f"/v1/products/{sku}/reviews", params={"sort": "helpful", "limit": 1}).json()
    rest = http.get(
        f"/v1/products/{sku}/reviews",
        params={"sort": "helpful", "cursor": one["next_cursor"]},
    ).json()
    assert [r["id"] for r in one["items"] + rest["items"]] == [older, newer]

    body = assert_problem(_vote(http, sku, older, alice), 403)  # her own review
    assert body["type"].endswith("/own-review")
    assert _vote(http, sku, older, carol).json()["helpful"] == 3


def test_votes_need_a_shopper_and_a_visible_review_of_that_product(http, sku):
    author, voter = new_shopper(http), new_shopper(http)
    review_id = _review(http, sku, author, "To hide")
    assert_problem(http.post(f"/v1/products/{sku}/reviews/{review_id}/helpful"), 401)
    assert_problem(_vote(http, "TOY-000111", review_id, voter), 404)  # another product
    assert_problem(_vote(http, sku, "no-such-review", voter), 404)
    admin = new_admin(http)
    hidden = http.post(
        f"/v1/admin/reviews/{review_id}/hide", json={"reason": "spam test"}, headers=admin
    )
    assert hidden.status_code == 200, hidden.text
    assert_problem(_vote(http, sku, review_id, voter), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/products/not%20a%20sku/reviews/x/helpful",
        "/v1/products/TOY-000111/reviews/" + "x" * 65 + "/helpful",
        "/v1/products/TOY-000111/reviews/%00/helpful",
        "/v1/products/TOY-000111/reviews/';DROP TABLE reviews;--/helpful",
    ],
)
def test_garbage_votes(http, path):
    voter = new_shopper(http)
    assert_problem(http.post(path, headers=auth(voter)), {404, 422})
