"""Pricing over HTTP: operators' promotions and coupons, and carts priced by the engine.

Everything this module creates is its own: products in a unique category
(``t-<hex>``), promotions targeting only those, coupons with a unique prefix;
they are removed at the end, so other tests' carts are never repriced. Auth calls
(one admin login, one shopper registration and login) stay well under the shared
per-IP limit.
"""

import base64
import json
import math
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parents[2]
AGORA = Path(sys.executable).parent / "agora"
LEAKS = ("Traceback", "asyncpg", "SELECT", "ray.", "/work/", "pydantic", "Error(")
NOW = int(time.time())
HOUR = 3600


def rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def assert_problem(reply: httpx.Response, statuses: set[int] | int) -> dict:
    statuses = {statuses} if isinstance(statuses, int) else statuses
    assert reply.status_code in statuses, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith(PROBLEM)
    body = reply.json()
    assert body["status"] == reply.status_code
    assert body["type"].startswith("https://") and body["title"]
    for leak in LEAKS:
        assert leak not in reply.text
    return body


@dataclass(frozen=True)
class Catalog:
    tag: str  # lower-case hex, unique to this run
    category_a: str
    category_b: str
    sku_a: str  # 100.00, 400 g, category_a
    sku_b: str  # 25.00, 1200 g, category_b

    @property
    def code_prefix(self) -> str:
        return f"T{self.tag.upper()}"


@pytest.fixture(scope="module")
async def catalog(db):
    tag = uuid.uuid4().hex[:10]
    cat = Catalog(
        tag=tag,
        category_a=f"t-{tag}",
        category_b=f"t-{tag}-b",
        sku_a=f"T{tag.upper()}-A",
        sku_b=f"T{tag.upper()}-B",
    )
    for sku, category, price, weight in (
        (cat.sku_a, cat.category_a, 10_000, 400),
        (cat.sku_b, cat.category_b, 2_500, 1_200),
    ):
        await db.execute(
            "INSERT INTO products (sku, name, description, category, price_minor, weight_g)"
            " VALUES ($1, $2, 'pricing test product', $3, $4, $5)",
            sku,
            f"Pricing test {sku}",
            category,
            price,
            weight,
        )
        await db.execute("INSERT INTO inventory (sku, on_hand) VALUES ($1, 100)", sku)
    yield cat
    codes = f"{cat.code_prefix}-%"
    await db.execute("DELETE FROM coupon_uses WHERE code LIKE $1", codes)
    await db.execute("DELETE FROM coupons WHERE code LIKE $1", codes)
    await db.execute("DELETE FROM promotions WHERE id LIKE $1", f"t-{tag}-%")
    await db.execute("DELETE FROM inventory WHERE sku = ANY($1::text[])", [cat.sku_a, cat.sku_b])
    await db.execute("DELETE FROM products WHERE sku = ANY($1::text[])", [cat.sku_a, cat.sku_b])


def _login(http: httpx.Client, email: str, password: str) -> dict[str, str]:
    data = {"grant_type": "password", "username": email, "password": password}
    reply = http.post("/v1/auth/token", data=data)
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


@pytest.fixture(scope="module")
def admin(http) -> dict[str, str]:
    email, password = f"t-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
    subprocess.run(
        [str(AGORA), "admin", "create", email, "--password-stdin"],
        input=password + "\n",
        text=True,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return _login(http, email, password)


@pytest.fixture(scope="module")
def shopper(http) -> tuple[str, dict[str, str]]:
    email, password = f"t-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
    reply = http.post(
        "/v1/auth/register", json={"email": email, "password": password, "name": "Pricing Tester"}
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["user_id"], _login(http, email, password)


@pytest.fixture(scope="module")
def promotions(http, admin, catalog) -> dict[str, str]:
    """10% off category_a (from an RFC 3339 start) and buy 3 pay 2 on sku_b."""
    ten = {
        "id": f"t-{catalog.tag}-10off",
        "kind": "percentage",
        "target": "category",
        "target_value": catalog.category_a,
        "value": 1000,
        "starts_at": rfc3339(NOW - 60),
        "ends_at": NOW + HOUR,
        "label": "10% off test",
    }
    three = {
        "id": f"t-{catalog.tag}-3for2",
        "kind": "buy_x_pay_y",
        "target": "sku",
        "target_value": catalog.sku_b,
        "buy": 3,
        "pay": 2,
        "starts_at": NOW - 60,
        "ends_at": rfc3339(NOW + HOUR),
    }
    for body in (ten, three):
        reply = http.post("/v1/admin/promotions", json=body, headers=admin)
        assert reply.status_code == 201, reply.text
    return {"ten": ten["id"], "three": three["id"]}


def coupon(http, admin, catalog, name: str, **fields) -> str:
    body = {
        "code": f"{catalog.code_prefix}-{name}",
        "kind": "percentage",
        "value": 1000,
        "starts_at": NOW - 60,
        "ends_at": NOW + HOUR,
        **fields,
    }
    reply = http.post("/v1/admin/coupons", json=body, headers=admin)
    assert reply.status_code == 201, reply.text
    return reply.json()["code"]


def new_cart(http, lines: dict[str, int]) -> dict[str, str]:
    headers = {"X-Cart-Token": http.get("/v1/cart").json()["cart_token"]}
    for sku, quantity in lines.items():
        reply = http.post(
            "/v1/cart/items", json={"sku": sku, "quantity": quantity}, headers=headers
        )
        assert reply.status_code == 200, reply.text
    return headers


async def priced_cart(http, headers, discount_total: int, **params) -> dict:
    """The cart once every replica sees the new promotions (cached for up to 5 s)."""
    seen: dict = {}

    async def check() -> bool:
        seen.update(http.get("/v1/cart", headers=headers, params=params).json())
        return seen["discount_total"]["amount"] == discount_total

    await eventually(check, timeout=12, interval=0.2)
    return seen


def amount(money: dict) -> int:
    assert money["currency"] == "BRL" and isinstance(money["amount"], int)
    return money["amount"]


# --- operators ----------------------------------------------------------------------


def test_admin_creates_and_lists_promotions(http, admin, catalog, promotions):
    ten = promotions["ten"]
    again = http.post(
        "/v1/admin/promotions",
        json={
            "id": ten,
            "kind": "fixed",
            "target": "cart",
            "value": 1,
            "starts_at": NOW,
            "ends_at": NOW + 1,
        },
        headers=admin,
    )
    assert assert_problem(again, 409)["type"].endswith("/promotion-exists")

    found, cursor = {}, None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = http.get("/v1/admin/promotions", params=params, headers=admin)
        assert page.status_code == 200, page.text
        found.update({p["id"]: p for p in page.json()["items"]})
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert found[ten] == {
        "id": ten,
        "kind": "percentage",
        "target": "category",
        "target_value": catalog.category_a,
        "value": 1000,
        "buy": None,
        "pay": None,
        "tiers": None,
        "starts_at": rfc3339(NOW - 60),
        "ends_at": rfc3339(NOW + HOUR),
        "stackable": False,
        "priority": 0,
        "label": "10% off test",
        "created_at": found[ten]["created_at"],
    }
    assert found[promotions["three"]]["buy"] == 3 and found[promotions["three"]]["pay"] == 2
    assert found[ten]["created_at"].endswith("Z")
    first = http.get("/v1/admin/promotions", params={"limit": 1}, headers=admin).json()
    assert len(first["items"]) == 1 and first["next_cursor"]


def test_admin_creates_and_lists_coupons(http, admin, catalog):
    code = coupon(
        http, admin, catalog, "listme", min_subtotal=5000, max_uses_total=10, label="Listed"
    )
    assert code == f"{catalog.code_prefix}-LISTME"
    dup = http.post(
        "/v1/admin/coupons",
        json={
            "code": code.lower(),
            "kind": "fixed",
            "value": 100,
            "starts_at": NOW,
            "ends_at": NOW + 10,
        },
        headers=admin,
    )
    assert assert_problem(dup, 409)["type"].endswith("/coupon-exists")
    after = f"{catalog.code_prefix}-LISTMD"  # sorts just before the code
    start = base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")
    page = http.get("/v1/admin/coupons", params={"limit": 1, "cursor": start}, headers=admin)
    assert page.status_code == 200, page.text
    assert page.json()["items"][0] == {
        "code": code,
        "kind": "percentage",
        "value": 1000,
        "starts_at": rfc3339(NOW - 60),
        "ends_at": rfc3339(NOW + HOUR),
        "min_subtotal": 5000,
        "max_uses_total": 10,
        "max_uses_per_user": None,
        "stackable": False,
        "label": "Listed",
        "uses_total": 0,
        "created_at": page.json()["items"][0]["created_at"],
    }


ADMIN_ROUTES = [
    ("POST", "/v1/admin/promotions"),
    ("GET", "/v1/admin/promotions"),
    ("POST", "/v1/admin/coupons"),
    ("GET", "/v1/admin/coupons"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_pricing_admin_routes_are_for_operators(http, shopper, method, path):
    _user_id, headers = shopper
    body = {"json": {}} if method == "POST" else {}
    refused = http.request(method, path, headers=headers, **body)
    assert assert_problem(refused, 403)["type"].endswith("/forbidden")
    assert_problem(http.request(method, path, **body), 401)
    roles = http.get("/openapi.json").json()["paths"][path][method.lower()]
    assert roles["x-required-role"] == "admin"


# --- carts priced by the engine -----------------------------------------------------


async def test_promotions_reprice_the_cart(http, catalog, promotions):
    headers = new_cart(http, {catalog.sku_a: 2, catalog.sku_b: 3, "BOO-000001": 1})
    cart = await priced_cart(http, headers, discount_total=2000 + 2500)
    a, b, book = cart["lines"]
    assert a["sku"] == catalog.sku_a and amount(a["line_subtotal"]) == 20_000
    assert a["discounts"] == [
        {
            "id": promotions["ten"],
            "label": "10% off test",
            "amount": {"amount": 2000, "currency": "BRL"},
        }
    ]
    assert amount(a["line_total"]) == 18_000 and amount(a["unit_price"]) == 10_000
    assert [d["label"] for d in b["discounts"]] == ["buy 3 pay 2"]
    assert amount(b["line_total"]) == 5_000
    # A line no promotion touches keeps line_total = unit_price x quantity.
    assert book["discounts"] == [] and book["line_total"] == book["line_subtotal"]
    assert amount(book["line_total"]) == amount(book["unit_price"])
    assert a["available"] and b["available"]
    subtotal = 20_000 + 7_500 + amount(book["unit_price"])
    assert amount(cart["subtotal"]) == subtotal
    assert [(d["id"], d["kind"], amount(d["amount"])) for d in cart["discounts"]] == [
        (promotions["ten"], "promotion", 2000),
        (promotions["three"], "promotion", 2500),
    ]
    assert cart["shipping"] is None and cart["delivery"] is None and cart["coupon"] is None
    assert amount(cart["total"]) == subtotal - 4500 + amount(cart["tax"])

    # Every mutation answers the priced cart too.
    removed = http.delete("/v1/cart/items/BOO-000001", headers=headers).json()
    assert amount(removed["total"]) == 27_500 - 4500 + amount(removed["tax"])
    fewer = http.patch(
        f"/v1/cart/items/{catalog.sku_b}", json={"quantity": 2}, headers=headers
    ).json()
    assert amount(fewer["discount_total"]) == 2000 and fewer["lines"][1]["discounts"] == []


async def test_shipping_is_quoted_on_request(http, db, catalog, promotions):
    headers = new_cart(http, {catalog.sku_a: 2, catalog.sku_b: 3})
    plain = await priced_cart(http, headers, discount_total=4500)
    rates = {(r["method"], r["region"]): r for r in await db.fetch("SELECT * FROM shipping_rates")}
    kilograms = math.ceil((2 * 400 + 3 * 1200) / 1000)
    discounted = 27_500 - 4500
    for method, state, region in (
        ("express", "sp", "SP"),
        ("standard", "BA", "*"),
        ("standard", "SP", "SP"),
    ):
        rate = rates.get((method, region)) or rates[(method, "*")]
        free = rate["free_over"] is not None and discounted >= rate["free_over"]
        expected = 0 if free else rate["base"] + rate["per_kg"] * kilograms
        cart = http.get(
            "/v1/cart", headers=headers, params={"shipping_method": method, "state": state}
        )
        assert cart.status_code == 200, cart.text
        body = cart.json()
        assert amount(body["shipping"]) == expected, (method, state)
        assert body["delivery"] == {"method": method, "state": state.upper(), "days": rate["days"]}
        assert amount(body["total"]) == discounted + expected + amount(body["tax"])
    no_state = http.get("/v1/cart", headers=headers, params={"shipping_method": "standard"})
    problem = assert_problem(no_state, 422)
    assert problem["type"].endswith("/shipping-destination-required") and problem["detail"]
    for params in (
        {"shipping_method": "teleport", "state": "SP"},
        {"shipping_method": "standard", "state": "S1"},
        {"shipping_method": "standard", "state": "SPX"},
    ):
        assert_problem(http.get("/v1/cart", headers=headers, params=params), 422)
    assert http.get("/v1/cart", headers=headers).json() == plain


async def test_coupons_apply_refuse_and_remove(http, admin, catalog, promotions):
    save = coupon(http, admin, catalog, "save", stackable=True, label="Ten more")
    codes = {
        "coupon-expired": coupon(
            http,
            admin,
            catalog,
            "old",
            starts_at=rfc3339(NOW - 2 * HOUR),
            ends_at=rfc3339(NOW - HOUR),
        ),
        "coupon-not-started": coupon(
            http, admin, catalog, "soon", starts_at=NOW + HOUR, ends_at=NOW + 2 * HOUR
        ),
        "coupon-min-subtotal": coupon(
            http, admin, catalog, "big", min_subtotal=10_000_000, stackable=True
        ),
        "coupon-login-required": coupon(
            http, admin, catalog, "once", max_uses_per_user=1, stackable=True
        ),
        "coupon-not-stackable": coupon(http, admin, catalog, "solo", kind="fixed", value=1500),
        "coupon-unknown": f"{catalog.code_prefix}-NOSUCH",
    }
    headers = new_cart(http, {catalog.sku_a: 2})
    await priced_cart(http, headers, discount_total=2000)

    applied = http.post("/v1/cart/coupon", json={"code": f" {save.lower()} "}, headers=headers)
    assert applied.status_code == 200, applied.text
    cart = applied.json()
    assert cart["coupon"] == {"code": save, "applied": True, "reason_code": None, "reason": None}
    assert cart["discounts"][-1] == {
        "id": save,
        "label": "Ten more",
        "kind": "coupon",
        "amount": {"amount": 1800, "currency": "BRL"},
    }
    assert amount(cart["discount_total"]) == 2000 + 1800
    assert amount(cart["total"]) == 20_000 - 3800 + amount(cart["tax"])
    assert amount(cart["lines"][0]["line_total"]) == 18_000  # the coupon is a cart discount
    assert http.get("/v1/cart", headers=headers).json() == cart

    for reason, code in codes.items():
        refused = http.post("/v1/cart/coupon", json={"code": code}, headers=headers)
        body = assert_problem(refused, 422)
        assert body["type"].endswith("/" + reason), (reason, body)
        assert body["detail"]
        assert http.get("/v1/cart", headers=headers).json() == cart  # the old coupon stays

    removed = http.delete("/v1/cart/coupon", headers=headers)
    assert removed.status_code == 200, removed.text
    assert removed.json()["coupon"] is None
    assert amount(removed.json()["total"]) == 18_000 + amount(removed.json()["tax"])
    assert http.delete("/v1/cart/coupon", headers=headers).json() == removed.json()

    # A first call with no cart token gets a cart (and its token) with the coupon on it.
    fresh = http.post("/v1/cart/coupon", json={"code": save})
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["cart_token"] == fresh.headers["x-cart-token"]
    assert fresh.json()["coupon"]["applied"] is True


async def test_a_coupon_that_stops_applying_shows_why(http, db, admin, catalog, promotions):
    ends_at = int(time.time()) + 4
    stale = coupon(http, admin, catalog, "stale", stackable=True, ends_at=ends_at)
    headers = new_cart(http, {catalog.sku_a: 1})
    await priced_cart(http, headers, discount_total=1000)
    cart = http.post("/v1/cart/coupon", json={"code": stale}, headers=headers).json()
    assert cart["coupon"]["applied"] is True and amount(cart["discount_total"]) == 1000 + 900

    time.sleep(max(0.0, ends_at - time.time()) + 0.1)  # the coupon's window closes
    reply = http.get("/v1/cart", headers=headers)
    assert reply.status_code == 200, reply.text
    later = reply.json()
    assert later["coupon"]["code"] == stale and later["coupon"]["applied"] is False
    assert later["coupon"]["reason_code"] == "coupon-expired" and later["coupon"]["reason"]
    assert [d["kind"] for d in later["discounts"]] == ["promotion"]
    assert amount(later["total"]) == 9000 + amount(later["tax"])
    # The cart still holds the code: it is part of the cart's own document.

    async def held() -> bool:
        row = await db.fetchval(
            "SELECT data->>'coupon' FROM carts WHERE data->>'coupon' = $1", stale
        )
        return row == stale

    await eventually(held, timeout=5)


async def test_per_user_coupon_on_a_shopper_cart(http, db, admin, catalog, shopper):
    user_id, auth = shopper
    once = coupon(http, admin, catalog, "peruser", value=500, max_uses_per_user=1)
    added = http.post("/v1/cart/items", json={"sku": catalog.sku_b}, headers=auth)
    assert added.status_code == 200, added.text
    cart = http.post("/v1/cart/coupon", json={"code": once}, headers=auth)
    assert cart.status_code == 200, cart.text
    assert cart.json()["cart_token"] is None and cart.json()["coupon"]["applied"] is True
    assert amount(cart.json()["discount_total"]) == 125  # 5% of 25.00

    await db.execute(
        "INSERT INTO coupon_uses (code, user_id, order_id) VALUES ($1, $2, $3)",
        once,
        user_id,
        f"test-{uuid.uuid4().hex}",
    )
    # The cart is shown from the coupon's definition (no usage counts on a warm read);
    # applying the code checks the counts, and checkout redeems atomically.
    later = http.get("/v1/cart", headers=auth).json()
    assert later["coupon"]["code"] == once
    again = http.post("/v1/cart/coupon", json={"code": once}, headers=auth)
    assert assert_problem(again, 422)["type"].endswith("/coupon-user-limit")
    http.delete("/v1/cart/coupon", headers=auth)


# --- garbage ------------------------------------------------------------------------

_GOOD_PROMOTION = {
    "kind": "percentage",
    "target": "cart",
    "value": 100,
    "starts_at": NOW + 10 * HOUR,
    "ends_at": NOW + 11 * HOUR,
}
BAD_PROMOTIONS = [
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"promo"',
    b"{}",
    b"12",
    {**_GOOD_PROMOTION},  # no id
    {**_GOOD_PROMOTION, "id": "x", "value": "100"},
    {**_GOOD_PROMOTION, "id": "x", "value": 2.5},
    {**_GOOD_PROMOTION, "id": "x", "value": True},
    {**_GOOD_PROMOTION, "id": "x", "value": 10_001},
    {**_GOOD_PROMOTION, "id": "x", "value": 10**40},
    {**_GOOD_PROMOTION, "id": "x", "kind": "bogus"},
    {**_GOOD_PROMOTION, "id": "x", "target_value": "books"},
    {**_GOOD_PROMOTION, "id": "x", "target": "category"},
    {**_GOOD_PROMOTION, "id": "x", "ends_at": NOW},
    {**_GOOD_PROMOTION, "id": "x", "starts_at": "yesterday"},
    {**_GOOD_PROMOTION, "id": "x", "starts_at": "2026-01-01T00:00:00"},
    {**_GOOD_PROMOTION, "id": "x", "ends_at": 10**13},
    {**_GOOD_PROMOTION, "id": "x", "uses_total": 0},
    {**_GOOD_PROMOTION, "id": "x", "label": "l" * 1000},
    {**_GOOD_PROMOTION, "id": "x" * 500},
    {**_GOOD_PROMOTION, "id": "'; DROP TABLE promotions; --"},
    {**_GOOD_PROMOTION, "id": "\u0000"},
    {**_GOOD_PROMOTION, "id": "x", "kind": "buy_x_pay_y", "buy": 2, "pay": 2},
    {**_GOOD_PROMOTION, "id": "x", "kind": "tier", "tiers": [[1, 100], [1, 200]]},
]
_GOOD_COUPON = {"kind": "fixed", "value": 100, "starts_at": NOW, "ends_at": NOW + HOUR}
BAD_COUPONS = [
    b"not json",
    b"[]",
    b"null",
    b"{}",
    {**_GOOD_COUPON},  # no code
    {**_GOOD_COUPON, "code": "has space"},
    {**_GOOD_COUPON, "code": "C" * 65},
    {**_GOOD_COUPON, "code": 12345},
    {**_GOOD_COUPON, "code": "OK1", "value": 0},
    {**_GOOD_COUPON, "code": "OK1", "value": -5},
    {**_GOOD_COUPON, "code": "OK1", "min_subtotal": -1},
    {**_GOOD_COUPON, "code": "OK1", "max_uses_total": 0},
    {**_GOOD_COUPON, "code": "OK1", "max_uses_per_user": "1"},
    {**_GOOD_COUPON, "code": "OK1", "stackable": "yes"},
    {**_GOOD_COUPON, "code": "OK1", "uses_total": 5},
    {**_GOOD_COUPON, "code": "OK1", "kind": "percentage", "value": 20_000},
    {**_GOOD_COUPON, "code": "OK1", "starts_at": None},
    {**_GOOD_COUPON, "code": "OK1", "ends_at": "2026-13-01T00:00:00Z"},
]


def _send(http, path, body, headers):
    if isinstance(body, bytes):
        raw = {**headers, "content-type": "application/json"}
        return http.post(path, content=body, headers=raw)
    return http.post(path, json=body, headers=headers)


@pytest.mark.parametrize("body", BAD_PROMOTIONS, ids=range(len(BAD_PROMOTIONS)))
async def test_promotion_garbage_changes_nothing(http, db, admin, body):
    before = await db.fetchval("SELECT count(*) FROM promotions")
    problem = assert_problem(_send(http, "/v1/admin/promotions", body, admin), {400, 422})
    if problem["status"] == 422 and isinstance(body, dict) and body:
        assert problem["errors"] and all(e["field"] and e["message"] for e in problem["errors"])
    assert await db.fetchval("SELECT count(*) FROM promotions") == before


@pytest.mark.parametrize("body", BAD_COUPONS, ids=range(len(BAD_COUPONS)))
async def test_coupon_garbage_changes_nothing(http, db, admin, body):
    before = await db.fetchval("SELECT count(*) FROM coupons")
    problem = assert_problem(_send(http, "/v1/admin/coupons", body, admin), {400, 422})
    if problem["status"] == 422 and isinstance(body, dict) and body:
        assert problem["errors"]
    assert await db.fetchval("SELECT count(*) FROM coupons") == before


BAD_CART_COUPONS = [
    b"not json",
    b"[]",
    b"null",
    b"{}",
    {"code": None},
    {"code": 5},
    {"code": ""},
    {"code": "a b"},
    {"code": "X" * 65},
    {"code": "OK", "extra": 1},
    {"code": ["OK"]},
    {"code": "'; DELETE FROM carts; --"},
]


async def test_cart_coupon_garbage_changes_nothing(http, db, admin, catalog):
    save = coupon(http, admin, catalog, "kept")
    headers = new_cart(http, {catalog.sku_b: 1})
    cart = http.post("/v1/cart/coupon", json={"code": save}, headers=headers).json()
    held = "SELECT count(*) FROM carts WHERE data->>'coupon' IS NOT NULL"

    async def flushed() -> bool:  # the coupon is written behind, with the cart
        return bool(await db.fetchval("SELECT 1 FROM carts WHERE data->>'coupon' = $1", save))

    await eventually(flushed, timeout=5)
    rows = await db.fetchval(held)
    for body in BAD_CART_COUPONS:
        assert_problem(_send(http, "/v1/cart/coupon", body, headers), {400, 422})
        assert http.get("/v1/cart", headers=headers).json() == cart
    assert await db.fetchval(held) == rows
    forged = {"X-Cart-Token": "garbage"}
    assert_problem(http.post("/v1/cart/coupon", json={"code": save}, headers=forged), 400)
    assert_problem(http.delete("/v1/cart/coupon", headers=forged), 400)
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "!!!"},
        {"cursor": "eyJ4IjogMX0"},
        {"cursor": "A" * 500},
    ):
        for path in ("/v1/admin/promotions", "/v1/admin/coupons"):
            assert_problem(http.get(path, params=params, headers=admin), {400, 422})


async def test_login_carries_the_anonymous_carts_coupon(http, admin, catalog, promotions):
    from tests.e2e.shoppers import login_with_cart, new_shopper

    code = coupon(http, admin, catalog, "carry", stackable=True)
    anon = new_cart(http, {catalog.sku_a: 1})
    applied = http.post("/v1/cart/coupon", json={"code": code}, headers=anon)
    assert applied.status_code == 200, applied.text
    shopper = new_shopper(http)
    merged = login_with_cart(http, shopper, anon["X-Cart-Token"])
    cart = http.get("/v1/cart", headers=merged).json()
    assert [line["sku"] for line in cart["lines"]] == [catalog.sku_a]
    assert cart["coupon"]["code"] == code
    assert http.get("/v1/cart", headers=anon).json()["coupon"] is None
