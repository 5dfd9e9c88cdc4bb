"""Analytics over HTTP: real orders placed through the API reach the warehouse (via the
outbox, Pulsar and the warehouse consumer) and the sales report counts them; product
views go straight to Pulsar and land too; the route's authz and garbage input."""

import uuid
from datetime import UTC, datetime

import pytest

from cluster.settings import get_settings
from streams.warehouse import EVENTS, Warehouse
from tests.conftest import eventually
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.e2e

ROUTE = "/v1/admin/analytics"
ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _buy(http, headers: dict[str, str], sku: str, quantity: int) -> dict:
    added = http.post("/v1/cart/items", json={"sku": sku, "quantity": quantity}, headers=headers)
    assert added.status_code == 200, added.text
    reply = http.post(
        "/v1/checkout",
        json={
            "shipping_address": ADDRESS,
            "shipping_method": "standard",
            "payment": {"method": "card", "token": "pm_card_visa"},
        },
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert reply.status_code == 201, reply.text
    order = reply.json()
    assert order["status"] == "confirmed"
    return order


async def test_sales_report_counts_real_orders(http, admin, db):
    category = f"an-{uuid.uuid4().hex[:10]}"
    first = await new_product(db, 20, price=4_990, category=category)
    second = await new_product(db, 20, price=1_250, category=category)
    # One order per new shopper: two quick orders from a new account can be fraud-blocked.
    orders = [
        _buy(http, auth(new_shopper(http)), first, 2),
        _buy(http, auth(new_shopper(http)), first, 1),
        _buy(http, auth(new_shopper(http)), second, 3),
    ]
    gross = sum(o["totals"]["subtotal"]["amount"] for o in orders)
    assert gross == 3 * 4_990 + 3 * 1_250
    today = _today()
    found: dict = {}

    async def counted() -> bool:
        reply = http.get(f"{ROUTE}/sales", params={"from": today, "to": today}, headers=admin)
        assert reply.status_code == 200, reply.text
        rows = [r for r in reply.json()["by_category"] if r["category"] == category]
        found.update(rows[0] if rows else {})
        return bool(rows) and rows[0]["orders"] == 3

    await eventually(counted, timeout=30, interval=0.5)
    assert found["units"] == 6
    assert found["gross"]["amount"] == gross
    assert found["net"]["amount"] == found["gross"]["amount"] - found["discounts"]["amount"]
    assert found["aov"]["amount"] == (2 * found["net"]["amount"] + 3) // 6
    report = http.get(f"{ROUTE}/sales", params={"from": today, "to": today}, headers=admin).json()
    assert report["by_day"][0]["day"] == today and report["by_day"][0]["orders"] >= 3
    top = http.get(
        f"{ROUTE}/top-products", params={"from": today, "to": today, "limit": 100}, headers=admin
    )
    assert top.status_code == 200 and "products" in top.json()


async def test_product_views_reach_the_warehouse(http, db):
    sku = await new_product(db, 5, category="an-views")
    shopper = new_shopper(http)
    anonymous_cart = http.get("/v1/cart")
    cart_token = anonymous_cart.headers.get("X-Cart-Token") or anonymous_cart.json()["cart_token"]
    assert http.get(f"/v1/products/{sku}", headers=auth(shopper)).status_code == 200
    assert http.get(f"/v1/products/{sku}", headers={"X-Cart-Token": cart_token}).status_code == 200
    assert http.get(f"/v1/products/{sku}").status_code == 200
    warehouse = Warehouse(get_settings().warehouse_location)
    today = datetime.now(UTC).date()
    visitors: list = []

    async def landed() -> bool:
        rows = warehouse.scan(EVENTS, today, today, types=["product.viewed"])
        visitors[:] = rows.filter(rows["sku"] == sku)["visitor"].to_list()
        return len(visitors) == 3

    await eventually(landed, timeout=30, interval=0.5)
    assert f"user:{shopper['user_id']}" in visitors
    assert None in visitors  # the caller who presented nothing
    metrics = http.get("/metrics").text
    assert "agora_product_views_total" in metrics
    assert "agora_product_views_dropped_total" in metrics


@pytest.mark.parametrize(
    "report", ["sales", "funnel", "rfm", "cohorts", "top-products", "stock-outs"]
)
def test_every_report_answers_json_png_and_svg(http, admin, report):
    params = {"from": "2026-01-01", "to": _today()}
    data = http.get(f"{ROUTE}/{report}", params=params, headers=admin)
    assert data.status_code == 200, data.text
    assert data.json()["from"] == "2026-01-01"
    png = http.get(f"{ROUTE}/{report}", params={**params, "format": "png"}, headers=admin)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = http.get(f"{ROUTE}/{report}", params={**params, "format": "svg"}, headers=admin)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content[:2000]


def test_anonymous_gets_401_and_a_shopper_403(http):
    assert_problem(http.get(f"{ROUTE}/sales"), 401)
    assert_problem(http.get(f"{ROUTE}/sales", headers=auth(new_shopper(http))), 403)
    assert_problem(http.get(f"{ROUTE}/nope", headers={"Authorization": "Bearer x.y.z"}), 401)


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("nope", {}, 404),
        ("..%2F..%2Fetc", {}, 404),
        ("sales%00", {}, {404, 422}),  # the middleware refuses control characters first
        ("x" * 41, {}, 422),
        ("sales", {"from": "yesterday"}, 422),
        ("sales", {"from": "2026-02-30"}, 422),
        ("sales", {"to": "2026-13-01"}, 422),
        ("sales", {"from": "2026-12-02", "to": "2026-12-01"}, 422),
        ("sales", {"from": "1900-01-01", "to": "2026-12-01"}, 422),
        ("sales", {"from": "9" * 400}, 422),
        ("sales", {"format": "gif"}, 422),
        ("sales", {"format": "PNG'--"}, 422),
        ("top-products", {"limit": "0"}, 422),
        ("top-products", {"limit": "101"}, 422),
        ("top-products", {"limit": "ten"}, 422),
    ],
)
def test_garbage_input_gets_a_problem(http, admin, path, params, status: int | set[int]):
    assert_problem(http.get(f"{ROUTE}/{path}", params=params, headers=admin), status)


async def test_a_cancelled_paid_order_is_netted_out_as_a_refund(http, admin, db):
    sku = await new_product(db, 10, price=3_330, category="an-refunds")
    shopper = auth(new_shopper(http))
    today = _today()

    def totals() -> dict:
        reply = http.get(f"{ROUTE}/sales", params={"from": today, "to": today}, headers=admin)
        assert reply.status_code == 200, reply.text
        return reply.json()["totals"]

    order = _buy(http, shopper, sku, 1)
    before = totals()["refunds"]["amount"]
    cancelled = http.post(f"/v1/orders/{order['id']}/cancel", headers=shopper)
    assert cancelled.status_code == 200, cancelled.text
    paid = order["totals"]["total"]["amount"]
    seen: dict = {}

    async def netted() -> bool:
        seen.update(totals())
        return seen["refunds"]["amount"] >= before + paid

    await eventually(netted, timeout=30, interval=0.5)
    assert seen["refund_count"] >= 1
    assert seen["net_after_refunds"]["amount"] == seen["net"]["amount"] - seen["refunds"]["amount"]
