"""Pix charges through PixGateway against the embedded PSP sandbox and PostgreSQL.

The sandbox's webhooks go to a small aiohttp receiver started here; what it
received is checked with the real webhook secret, never assumed.
"""

import asyncio
import json
import socket
import time
import uuid

import aiohttp
import pytest
from aiohttp import web

from cluster.adapters.pix import parse_emv, valid_br_code
from cluster.adapters.pix_gateway import PixGateway, txid_for
from cluster.adapters.webhooks import HEADER, verify
from cluster.services import pix_webhook_secret
from cluster.settings import get_settings

pytestmark = pytest.mark.integration


def new_key() -> str:
    return f"test-pix-{uuid.uuid4()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """Records every webhook delivery; answers ``failures[txid]`` 503s first."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str | None, bytes]] = []
        self.failures: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append((request.headers.get(HEADER), body))
        txid = json.loads(body).get("txid")
        if self.failures.get(txid, 0) > 0:
            self.failures[txid] -= 1
            return web.Response(status=503)
        return web.Response(status=204)

    def for_txid(self, txid: str) -> list[tuple[str | None, bytes]]:
        return [(h, b) for h, b in self.deliveries if json.loads(b).get("txid") == txid]


@pytest.fixture(scope="module")
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/pix", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/webhooks/pix"
    yield rec
    await runner.cleanup()


@pytest.fixture(scope="module")
async def gateway(db, services):
    gw = PixGateway(db, services.pix, pix_key=get_settings().pix_key)
    yield gw
    await gw.aclose()


@pytest.fixture(scope="module")
async def psp(services):
    async with aiohttp.ClientSession(base_url=services.pix + "/") as session:
        yield session


async def pay(psp, txid: str) -> tuple[int, dict]:
    async with psp.post(f"v1/charges/{txid}/pay") as reply:
        return reply.status, await reply.json()


async def sandbox_charge(psp, txid: str) -> tuple[int, dict]:
    async with psp.get(f"v1/charges/{txid}") as reply:
        return reply.status, await reply.json()


async def payment_rows(db, key: str) -> list:
    return await db.fetch("SELECT * FROM payments WHERE key = $1", key)


async def test_charge_is_idempotent_by_key(gateway, db, psp, receiver):
    key = new_key()
    expires_at = int(time.time()) + 600
    first = await gateway.create_charge(key, 4990, expires_at, receiver.url)
    again = await gateway.create_charge(key, 4990, expires_at + 60, receiver.url)
    assert first == again
    assert first["txid"] == txid_for(key)
    assert first["amount"] == 4990 and first["expires_at"] == expires_at
    assert valid_br_code(first["br_code"])
    fields = parse_emv(first["br_code"])
    assert fields["54"] == "49.90"
    assert parse_emv(fields["62"]) == {"05": first["txid"]}
    assert parse_emv(fields["26"])["01"] == get_settings().pix_key

    rows = await payment_rows(db, key)
    assert len(rows) == 1
    assert (rows[0]["provider"], rows[0]["provider_id"], rows[0]["status"]) == (
        "pix",
        first["txid"],
        "pending",
    )
    status, charge = await sandbox_charge(psp, first["txid"])
    assert status == 200
    assert charge["status"] == "pending" and charge["br_code"] == first["br_code"]


async def test_concurrent_creates_make_one_charge(gateway, db, receiver):
    key = new_key()
    expires_at = int(time.time()) + 600
    results = await asyncio.gather(
        *(gateway.create_charge(key, 1500, expires_at, receiver.url) for _ in range(8))
    )
    assert len({r["br_code"] for r in results}) == 1
    assert len(await payment_rows(db, key)) == 1


async def test_key_reused_with_another_amount_is_refused(gateway, receiver):
    key = new_key()
    await gateway.create_charge(key, 1000, int(time.time()) + 600, receiver.url)
    with pytest.raises(ValueError):
        await gateway.create_charge(key, 2000, int(time.time()) + 600, receiver.url)


async def test_paying_sends_a_signed_webhook(gateway, db, psp, receiver):
    key = new_key()
    charge = await gateway.create_charge(key, 12345, int(time.time()) + 600, receiver.url)
    txid = charge["txid"]

    status, answer = await pay(psp, txid)
    assert status == 200
    assert answer == {"status": "paid", "webhook_status": 204}
    deliveries = receiver.for_txid(txid)
    assert len(deliveries) == 1
    header, body = deliveries[0]
    assert verify(pix_webhook_secret(), header, body, int(time.time()))
    assert not verify(b"not-the-secret", header, body, int(time.time()))
    event = json.loads(body)
    assert event["type"] == "pix.paid"
    assert (event["txid"], event["amount"]) == (txid, 12345)
    assert abs(event["paid_at"] - time.time()) < 60

    assert await gateway.mark_paid(key, 99) == "refused"
    assert await gateway.mark_paid(key, event["amount"]) == "recorded"
    # A retry (the order shard died before storing the first answer): told apart from a
    # wrong amount, changing nothing.
    assert await gateway.mark_paid(key, event["amount"]) == "already-recorded"
    assert await gateway.mark_paid(key, 99) == "refused"
    assert not await gateway.mark_expired(key)
    assert (await payment_rows(db, key))[0]["status"] == "succeeded"

    status, _ = await pay(psp, txid)
    assert status == 409
    assert len(receiver.for_txid(txid)) == 1
    assert (await sandbox_charge(psp, txid))[1]["status"] == "paid"


async def test_webhook_is_retried_until_accepted(gateway, psp, receiver):
    charge = await gateway.create_charge(new_key(), 700, int(time.time()) + 600, receiver.url)
    receiver.failures[charge["txid"]] = 2
    status, answer = await pay(psp, charge["txid"])
    assert (status, answer["webhook_status"]) == (200, 204)
    deliveries = receiver.for_txid(charge["txid"])
    assert len(deliveries) == 3
    assert all(verify(pix_webhook_secret(), h, b, int(time.time())) for h, b in deliveries)


async def test_unreachable_receiver_leaves_webhook_status_null(gateway, psp):
    dead = f"http://127.0.0.1:{free_port()}/webhooks/pix"
    charge = await gateway.create_charge(new_key(), 800, int(time.time()) + 600, dead)
    status, answer = await pay(psp, charge["txid"])
    assert (status, answer) == (200, {"status": "paid", "webhook_status": None})


async def test_expired_charge_cannot_be_paid(gateway, db, psp, receiver):
    key = new_key()
    charge = await gateway.create_charge(key, 500, int(time.time()) - 1, receiver.url)
    status, _ = await pay(psp, charge["txid"])
    assert status == 409
    assert receiver.for_txid(charge["txid"]) == []
    assert (await sandbox_charge(psp, charge["txid"]))[1]["status"] == "expired"
    assert await gateway.mark_expired(key)
    row = (await payment_rows(db, key))[0]
    assert (row["status"], row["decline_code"]) == ("declined", "expired")
    assert await gateway.mark_paid(key, 500) == "refused"


async def test_unknown_charge_is_404(psp):
    assert (await pay(psp, "nosuchcharge"))[0] == 404
    assert (await sandbox_charge(psp, "nosuchcharge"))[0] == 404


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        [],
        {},
        {
            "txid": "bad-txid!",
            "amount": 100,
            "expires_at": 2_000_000_000,
            "webhook_url": "http://x",
        },
        {"txid": "ok1", "amount": 0, "expires_at": 2_000_000_000, "webhook_url": "http://x"},
        {"txid": "ok1", "amount": True, "expires_at": 2_000_000_000, "webhook_url": "http://x"},
        {"txid": "ok1", "amount": 100, "expires_at": "soon", "webhook_url": "http://x"},
        {"txid": "ok1", "amount": 100, "expires_at": 2_000_000_000, "webhook_url": "file:///x"},
        {
            "txid": "ok1",
            "amount": 100,
            "expires_at": 2_000_000_000,
            "webhook_url": "http://x",
            "pix_key": "",
        },
    ],
)
async def test_sandbox_refuses_garbage(psp, body):
    data = body if isinstance(body, str) else json.dumps(body)
    async with psp.post("v1/charges", data=data) as reply:
        assert reply.status == 400
        assert "error" in await reply.json()


# --- the expiry asks the PSP before expiring a pending charge ---------------------------------


async def test_a_charge_paid_whose_webhook_never_came_is_found_paid_at_the_expiry(
    gateway, db, psp, receiver
):
    """Paid at the PSP, the webhook delivered to a receiver that never told the gateway:
    the row is pending at the expiry, the PSP says paid, so ``expire`` records it and
    answers ``paid`` (the order is then confirmed), once; a repeat answers the same."""
    key = new_key()
    charge = await gateway.create_charge(key, 1500, int(time.time()) + 600, receiver.url)
    assert (await pay(psp, charge["txid"]))[0] == 200
    assert (await payment_rows(db, key))[0]["status"] == "pending"
    assert await gateway.expire(key, 1500) == "paid"
    assert (await payment_rows(db, key))[0]["status"] == "succeeded"
    assert await gateway.expire(key, 1500) == "paid"
    assert await gateway.mark_paid(key, 1500) == "already-recorded"


async def test_a_charge_expired_at_the_psp_is_expired(gateway, db, psp, receiver):
    key = new_key()
    charge = await gateway.create_charge(key, 700, int(time.time()) - 1, receiver.url)
    assert (await sandbox_charge(psp, charge["txid"]))[1]["status"] == "expired"
    assert await gateway.expire(key, 700) == "expired"
    row = (await payment_rows(db, key))[0]
    assert (row["status"], row["decline_code"]) == ("declined", "expired")
    assert await gateway.expire(key, 700) == "expired"


async def test_a_charge_still_payable_at_the_psp_is_not_expired(gateway, db, receiver):
    """The PSP still shows it pending (its clock has not reached the expiry): it could be
    paid, so nothing changes and ``expire`` answers ``unknown``."""
    key = new_key()
    await gateway.create_charge(key, 600, int(time.time()) + 600, receiver.url)
    assert await gateway.expire(key, 600) == "unknown"
    assert (await payment_rows(db, key))[0]["status"] == "pending"


async def test_the_psp_unreachable_leaves_the_charge_pending_until_the_limit(gateway, db, receiver):
    """The PSP cannot be reached at the expiry: ``unknown``, the row stays pending (the
    order shard asks again at its next sweep); a gateway whose ``give_up_after_s`` the
    row's age has passed expires it anyway."""
    key = new_key()
    await gateway.create_charge(key, 900, int(time.time()) - 1, receiver.url)
    dead = f"http://127.0.0.1:{free_port()}"
    down = PixGateway(db, dead, timeout_s=2.0)
    limited = PixGateway(db, dead, timeout_s=2.0, give_up_after_s=0.0)
    try:
        assert await down.expire(key, 900) == "unknown"
        assert (await payment_rows(db, key))[0]["status"] == "pending"
        assert await limited.expire(key, 900) == "expired"
        row = (await payment_rows(db, key))[0]
        assert (row["status"], row["decline_code"]) == ("declined", "expired")
    finally:
        await down.aclose()
        await limited.aclose()
