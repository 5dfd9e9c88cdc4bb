"""Operator webhooks end to end: a local aiohttp receiver gets signed deliveries, once,
also after it was down; the delivery log and manual redelivery; garbage and authz.

Delivering to 127.0.0.1 needs the system started with AGORA_WEBHOOKS_ALLOW_PRIVATE=1
(the SSRF guard refuses loopback otherwise, which the last test checks in that mode).
"""

import asyncio
import socket
import threading
import time
import uuid

import pytest
from aiohttp import web

from streams.consumers.webhooks import verify_signature
from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + uuid.uuid4().hex


class Receiver:
    """An aiohttp server on its own thread and loop; start/stop on the same port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def start(self) -> None:
        async def run() -> None:
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.runner = None

    def for_sku(self, sku: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if sku.encode() in b]


@pytest.fixture(scope="module")
def admin(http):
    return new_admin(http)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()
    r.loop.call_soon_threadsafe(r.loop.stop)


@pytest.fixture(scope="module")
def webhook(http, admin, receiver, system):
    reply = http.post(
        "/v1/admin/webhooks",
        json={"url": receiver.url, "events": ["inventory.changed"], "secret": SECRET},
        headers=admin,
    )
    if reply.status_code == 422 and not system.webhooks_allow_private:
        pytest.skip("the running system refuses loopback webhooks (AGORA_WEBHOOKS_ALLOW_PRIVATE)")
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert "secret" not in created
    yield created
    http.delete(f"/v1/admin/webhooks/{created['id']}", headers=admin)


async def _until(check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def _deliveries(http, admin, webhook_id: str, **params) -> list[dict]:
    reply = http.get(f"/v1/admin/webhooks/{webhook_id}/deliveries", params=params, headers=admin)
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


async def test_a_signed_delivery_arrives_once(http, admin, receiver, webhook, db):
    receiver.start()
    sku = await new_product(db, 5)
    assert http.put(f"/v1/admin/inventory/{sku}", json={"on_hand": 9}, headers=admin).is_success
    got = await _until(lambda: receiver.for_sku(sku))
    assert len(got) == 1
    headers, body = got[0]
    assert headers["Agora-Event-Type"] == "inventory.changed"
    assert verify_signature(SECRET, body, headers["Agora-Signature"], int(time.time()))
    assert not verify_signature(
        "wrong-secret-value", body, headers["Agora-Signature"], int(time.time())
    )
    await asyncio.sleep(1.5)
    assert len(receiver.for_sku(sku)) == 1
    log = _deliveries(http, admin, webhook["id"], status="delivered")
    mine = [d for d in log if d["event_id"] == headers["Agora-Event-Id"]]
    assert len(mine) == 1 and mine[0]["attempts"] == 1 and mine[0]["last_status"] == 204


async def test_retried_after_the_receiver_was_down_then_redelivered_on_demand(
    http, admin, receiver, webhook, db
):
    receiver.stop()
    sku = await new_product(db, 5)
    assert http.put(f"/v1/admin/inventory/{sku}", json={"on_hand": 4}, headers=admin).is_success

    def failing() -> list[dict]:
        return [
            d
            for d in _deliveries(http, admin, webhook["id"], status="pending")
            if d["attempts"] >= 2 and d["last_error"]
        ]

    pending = await _until(failing)
    assert pending, "the delivery was not retried while the receiver was down"
    assert receiver.for_sku(sku) == []
    receiver.start()
    got = await _until(lambda: receiver.for_sku(sku), timeout=90)
    assert len(got) == 1
    event_id = got[0][0]["Agora-Event-Id"]
    delivered = [
        d
        for d in _deliveries(http, admin, webhook["id"], status="delivered")
        if d["event_id"] == event_id
    ]
    assert len(delivered) == 1 and delivered[0]["attempts"] >= 3

    again = http.post(
        f"/v1/admin/webhooks/{webhook['id']}/deliveries/{delivered[0]['id']}/redeliver",
        headers=admin,
    )
    assert again.status_code == 202, again.text
    twice = await _until(lambda: len(receiver.for_sku(sku)) >= 2)
    assert twice and len(receiver.for_sku(sku)) == 2


def test_list_and_delete(http, admin, webhook):
    listed = http.get("/v1/admin/webhooks", headers=admin).json()
    assert webhook["id"] in {w["id"] for w in listed["items"]}
    assert all("secret" not in w for w in listed["items"])
    other = http.post(
        "/v1/admin/webhooks",
        json={"url": webhook["url"], "events": ["order.confirmed"], "secret": SECRET},
        headers=admin,
    ).json()
    assert http.delete(f"/v1/admin/webhooks/{other['id']}", headers=admin).status_code == 204
    assert_problem(http.delete(f"/v1/admin/webhooks/{other['id']}", headers=admin), 404)
    listed = http.get("/v1/admin/webhooks", headers=admin).json()
    assert other["id"] not in {w["id"] for w in listed["items"]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": "http://example.com/h", "events": ["order.confirmed"]},
        {"url": "http://example.com/h", "events": [], "secret": SECRET},
        {"url": "http://example.com/h", "events": ["no.such_event"], "secret": SECRET},
        {"url": "http://example.com/h", "events": ["auth.logged_in"], "secret": SECRET},
        {"url": "http://example.com/h", "events": ["order.confirmed"], "secret": "short"},
        {"url": "ftp://example.com/h", "events": ["order.confirmed"], "secret": SECRET},
        {"url": "http://u:p@example.com/h", "events": ["order.confirmed"], "secret": SECRET},
        {"url": "not a url", "events": ["order.confirmed"], "secret": SECRET},
        {"url": "http://x/" + "a" * 2100, "events": ["order.confirmed"], "secret": SECRET},
        {"url": 5, "events": ["order.confirmed"], "secret": SECRET},
        {"url": "http://example.com/h", "events": "order.confirmed", "secret": SECRET},
        {"url": "http://example.com/h", "events": ["order.confirmed"], "secret": SECRET, "x": 1},
        [],
    ],
)
def test_garbage_registrations_are_problems(http, admin, body):
    before = len(
        http.get("/v1/admin/webhooks", params={"limit": 100}, headers=admin).json()["items"]
    )
    assert_problem(http.post("/v1/admin/webhooks", json=body, headers=admin), 422)
    after = len(
        http.get("/v1/admin/webhooks", params={"limit": 100}, headers=admin).json()["items"]
    )
    assert before == after


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/v1/admin/webhooks/nope", 422),
        ("DELETE", f"/v1/admin/webhooks/wh_{'0' * 32}", 404),
        ("GET", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries", 404),
        ("GET", "/v1/admin/webhooks?cursor=garbage", 400),
        ("GET", "/v1/admin/webhooks?limit=0", 422),
        ("POST", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries/1/redeliver", 404),
        ("POST", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries/-1/redeliver", 422),
        ("POST", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries/abc/redeliver", 422),
    ],
)
def test_garbage_paths_are_problems(http, admin, method, path, status):
    assert_problem(http.request(method, path, headers=admin), status)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/webhooks"),
        ("POST", "/v1/admin/webhooks"),
        ("DELETE", f"/v1/admin/webhooks/wh_{'0' * 32}"),
        ("GET", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries"),
        ("POST", f"/v1/admin/webhooks/wh_{'0' * 32}/deliveries/1/redeliver"),
    ],
)
def test_authz(http, method, path):
    assert_problem(http.request(method, path, json={}), 401)
    shopper = new_shopper(http)
    assert_problem(http.request(method, path, json={}, headers=auth(shopper)), 403)


def test_loopback_is_refused_unless_allowed(http, admin, system):
    reply = http.post(
        "/v1/admin/webhooks",
        json={"url": "http://169.254.169.254/x", "events": ["order.confirmed"], "secret": SECRET},
        headers=admin,
    )
    if system.webhooks_allow_private:
        assert reply.status_code == 201
        http.delete(f"/v1/admin/webhooks/{reply.json()['id']}", headers=admin)
    else:
        assert "private" in assert_problem(reply, 422)["errors"][0]["message"]
