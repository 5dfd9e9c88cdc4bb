"""The audit log: operator actions record who acted, the API lists them, verify finds tampering."""

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper
from tests.e2e.test_checkout import body, key
from tests.e2e.test_order_operations import confirmed_order

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("seq", "event_id", "at", "actor", "action", "target", "details", "prev_hash", "hash")


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


def admin_id(http, admin) -> str:
    return http.get("/v1/me", headers=admin).json()["user_id"]


async def wait_for_records(http, admin, params: dict, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 60
    while True:
        reply = http.get("/v1/admin/audit", params=params, headers=admin)
        assert reply.status_code == 200, reply.text
        items = reply.json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.3)


def agora_audit_verify() -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "agora"), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


async def test_operator_actions_record_who_acted(http, admin, db):
    sku = await new_product(db, 5)
    me = admin_id(http, admin)
    assert http.put(f"/v1/admin/inventory/{sku}", json={"on_hand": 7}, headers=admin).is_success
    adjusted = http.post(
        f"/v1/admin/inventory/{sku}/adjust", json={"delta": 3, "reason": "recount"}, headers=admin
    )
    assert adjusted.status_code == 200, adjusted.text
    # Wait for this sku's two records (the admin's own login events share the actor).
    deadline = time.monotonic() + 60
    while len(mine := await operator_records(http, admin, me, sku)) < 2:
        assert time.monotonic() < deadline, mine
        await asyncio.sleep(0.3)
    assert [i["action"] for i in mine] == ["inventory.adjust", "inventory.set"]  # newest first
    assert mine[0]["details"] == {"delta": 3, "reason": "recount", "on_hand": 10}
    assert mine[1]["details"] == {"on_hand": 7}
    assert all(len(i["hash"]) == 64 and len(i["prev_hash"]) == 64 for i in mine)
    assert mine[0]["seq"] > mine[1]["seq"]
    only = http.get(
        "/v1/admin/audit", params={"actor": me, "action": "inventory.set"}, headers=admin
    ).json()["items"]
    assert {i["action"] for i in only} == {"inventory.set"}


async def operator_records(http, admin, me: str, target: str) -> list[dict]:
    """This operator's records about ``target``, newest first, once there are any.

    admin.action events are keyed by the operator, so they are applied in order:
    once the newest expected record is in, so is everything the operator did before.
    """
    deadline = time.monotonic() + 60
    while True:
        reply = http.get("/v1/admin/audit", params={"actor": me, "limit": 100}, headers=admin)
        assert reply.status_code == 200, reply.text
        items = [i for i in reply.json()["items"] if i["target"] == target]
        if items or time.monotonic() > deadline:
            assert all(i["actor"] == me for i in items)
            return items
        await asyncio.sleep(0.3)


async def test_order_operations_record_the_operator(http, admin, db):
    me = admin_id(http, admin)
    _, _, order = await confirmed_order(http, db)
    path = f"/v1/admin/orders/{order['id']}"
    shipped = http.post(f"{path}/ship", json={"carrier": "Correios"}, headers=admin)
    assert shipped.status_code == 200, shipped.text
    refunded = http.post(f"{path}/refund", headers=admin)
    assert refunded.status_code == 200, refunded.text
    deadline = time.monotonic() + 60
    while len(items := await operator_records(http, admin, me, order["id"])) < 2:
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.3)
    assert [(i["action"], i["details"]) for i in items] == [
        ("order.refund", {"status": "refunded"}),
        ("order.ship", {"carrier": "Correios", "status": "shipped"}),
    ]


async def test_order_review_records_the_operator(http, admin, db):
    me = admin_id(http, admin)
    shopper = new_shopper(http)
    sku = await new_product(db, 20, price=50_000)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 11}, headers=auth(shopper))
    held = http.post("/v1/checkout", json=body(), headers={**auth(shopper), **key()})
    if held.status_code != 202:
        pytest.skip(f"the fraud model did not hold this order for review: {held.status_code}")
    order_id = held.json()["id"]
    reviewed = http.post(
        f"/v1/admin/orders/{order_id}/review", json={"decision": "reject"}, headers=admin
    )
    assert reviewed.status_code == 200, reviewed.text
    items = await operator_records(http, admin, me, order_id)
    assert [(i["action"], i["details"]) for i in items] == [
        ("order.review", {"decision": "reject", "status": "failed"})
    ]


async def test_security_events_are_recorded(http, admin):
    shopper = new_shopper(http)
    bad = http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": shopper["email"], "password": "wrong-pw-123"},
    )
    assert bad.status_code == 401
    items = await wait_for_records(http, admin, {"actor": shopper["user_id"]}, 2)
    actions = {i["action"] for i in items}
    assert {"auth.logged_in", "auth.login_failed"} <= actions, actions


async def test_cursor_pages_and_time_filters(http, admin):
    me = admin_id(http, admin)
    for _ in range(3):
        code = f"AUD{uuid.uuid4().hex[:8].upper()}"
        created = http.post(
            "/v1/admin/coupons",
            json={
                "code": code,
                "kind": "fixed",
                "value": 100,
                "starts_at": "2026-01-01T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
    await wait_for_records(http, admin, {"actor": me, "action": "coupon.create"}, 3)
    first = http.get("/v1/admin/audit", params={"actor": me, "limit": 2}, headers=admin).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = http.get(
        "/v1/admin/audit",
        params={"actor": me, "limit": 2, "cursor": first["next_cursor"]},
        headers=admin,
    ).json()
    assert second["items"] and second["items"][0]["seq"] < first["items"][-1]["seq"]
    newest = first["items"][0]["at"]
    later = http.get(
        "/v1/admin/audit", params={"actor": me, "since": "2999-01-01T00:00:00Z"}, headers=admin
    ).json()
    assert later["items"] == []
    until = http.get("/v1/admin/audit", params={"actor": me, "until": newest}, headers=admin).json()
    assert all(i["at"] < newest for i in until["items"])


def test_authz(http):
    assert_problem(http.get("/v1/admin/audit"), 401)
    shopper = new_shopper(http)
    assert_problem(http.get("/v1/admin/audit", headers=auth(shopper)), 403)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"since": "yesterday"},
        {"until": "2026-13-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"cursor": "garbage"},
        {"cursor": "eyJhZnRlciI6ICJ4In0"},  # {"after": "x"}: not a seq
        {"actor": "a" * 101},
        {"action": ""},
    ],
)
def test_garbage_filters_are_problems(http, admin, params):
    status = {400, 422}
    assert_problem(http.get("/v1/admin/audit", params=params, headers=admin), status)


async def test_verify_detects_an_edited_and_a_deleted_record(http, admin, db):
    sku = await new_product(db, 5)
    me = admin_id(http, admin)
    for on_hand in (11, 12, 13):
        assert http.put(
            f"/v1/admin/inventory/{sku}", json={"on_hand": on_hand}, headers=admin
        ).is_success
    items = await wait_for_records(http, admin, {"actor": me, "action": "inventory.set"}, 3)
    target = next(i for i in items if i["target"] == sku and i["details"] == {"on_hand": 12})
    seq = target["seq"]
    clean = agora_audit_verify()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "intact" in clean.stdout

    async with db.acquire() as conn:
        # The trigger refuses edits and deletes from the application's role...
        with pytest.raises(Exception, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'x' WHERE seq = $1", seq)
        # ...a superuser can bypass it: that is what verify must catch.
        original = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = $1", seq)
        await conn.execute("SET session_replication_role = replica")
        try:
            await conn.execute(
                "UPDATE audit_log SET details = '{\"on_hand\": 999}'::jsonb WHERE seq = $1", seq
            )
            edited = agora_audit_verify()
            assert edited.returncode == 1, edited.stdout
            assert f"record {seq}" in edited.stdout and "altered" in edited.stdout
            await conn.execute("DELETE FROM audit_log WHERE seq = $1", seq)
            deleted = agora_audit_verify()
            assert deleted.returncode == 1, deleted.stdout
            assert f"record {seq} is missing" in deleted.stdout
        finally:
            await conn.execute("DELETE FROM audit_log WHERE seq = $1", seq)
            await conn.execute(
                f"INSERT INTO audit_log ({', '.join(COLUMNS)})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *[original[k] for k in COLUMNS],
            )
            await conn.execute("SET session_replication_role = origin")
    restored = agora_audit_verify()
    assert restored.returncode == 0, restored.stdout


def test_admin_routes_need_a_token(base_url):
    with httpx.Client(base_url=base_url) as client:
        assert_problem(client.put("/v1/admin/inventory/X", json={"on_hand": 1}), 401)
