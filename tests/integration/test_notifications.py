"""Notifications against the real system: Pulsar -> consumer actor -> mail_outbox -> aiosmtpd.

Mail is read where a developer reads it: the embedded SMTP server's Maildir
under var/mail. Each shopper has a unique address, so a test counts only its
own mail.
"""

import asyncio
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pyotp
import pytest
import ray

from cluster import infra
from streams.consumers.notifications import notifications_actor_name
from tests.e2e.shoppers import auth, new_admin, new_product, new_shopper

pytestmark = pytest.mark.integration

ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}
CHECKOUT = {
    "shipping_address": ADDRESS,
    "shipping_method": "standard",
    "payment": {"method": "card", "token": "pm_card_visa"},
}


def mails_to(settings, address: str) -> list[EmailMessage]:
    """Every message the embedded SMTP server delivered to ``address``."""
    found = []
    root = infra.mail_dir(settings)
    for sub in ("new", "cur"):
        folder = root / sub
        if not folder.exists():
            continue
        for path in sorted(folder.iterdir()):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                continue
            if address.encode() not in data:
                continue
            message = message_from_bytes(data, policy=policy.default)
            assert isinstance(message, EmailMessage)
            if message["To"] == address:
                found.append(message)
    return found


async def wait_for_mail(settings, address: str, subject_part: str, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in mails_to(settings, address) if subject_part in str(m["Subject"])]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return body.get_content()


@pytest.fixture(scope="module")
def embedded_smtp(system):
    if system.smtp_url:
        pytest.skip("AGORA_SMTP_URL is set: mail does not land in var/mail")
    return system


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def checkout(http, db_loop_sku: str, headers: dict) -> dict:
    added = http.post("/v1/cart/items", json={"sku": db_loop_sku, "quantity": 2}, headers=headers)
    assert added.status_code in (200, 201), added.text
    reply = http.post(
        "/v1/checkout", json=CHECKOUT, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


async def test_welcome_and_order_confirmed_mail_arrive_once(embedded_smtp, http, db):
    shopper = new_shopper(http)
    welcome = await wait_for_mail(embedded_smtp, shopper["email"], "Agora")
    assert len(welcome) == 1, [m["Subject"] for m in welcome]
    sku = await new_product(db, 10, price=12_990)
    order = checkout(http, sku, auth(shopper))
    found = await wait_for_mail(embedded_smtp, shopper["email"], order["id"])
    assert len(found) == 1
    mail = found[0]
    # The default locale is pt-BR; both parts carry lines, totals and the delivery address.
    assert mail["Subject"] == f"Pedido {order['id']} confirmado"
    assert mail.get_content_type() == "multipart/alternative"
    text = text_of(mail)
    html = mail.get_body(preferencelist=("html",))
    assert html is not None
    assert sku in text and "R$ 259,80" in text and "01310-100" in text
    assert sku in html.get_content()
    # Redelivery changes nothing: one row per (event, kind), sent once.
    rows = await db.fetch(
        "SELECT sent_at, attempts FROM mail_outbox WHERE to_addr = $1 AND kind = 'order_confirmed'",
        shopper["email"],
    )
    assert len(rows) == 1 and rows[0]["sent_at"] is not None
    await asyncio.sleep(1.5)
    assert len(await wait_for_mail(embedded_smtp, shopper["email"], order["id"], 0)) == 1


async def test_the_shopper_locale_preference_picks_english(embedded_smtp, http, db):
    shopper = new_shopper(http)
    headers = auth(shopper)
    patched = http.patch("/v1/me", json={"preferences": {"locale": "en"}}, headers=headers)
    assert patched.status_code == 200, patched.text
    sku = await new_product(db, 10, price=1_000)
    order = checkout(http, sku, headers)
    found = await wait_for_mail(embedded_smtp, shopper["email"], order["id"])
    assert [str(m["Subject"]) for m in found] == [f"Order {order['id']} confirmed"]
    assert "Hello, Test Shopper." in text_of(found[0])


async def _one_mail(settings, shopper: dict, subject: str) -> EmailMessage:
    found = await wait_for_mail(settings, shopper["email"], subject)
    assert [str(m["Subject"]) for m in found] == [subject], subject
    assert found[0].get_body(preferencelist=("html",)) is not None  # HTML and text
    return found[0]


async def test_every_other_order_and_account_mail_arrives_once(embedded_smtp, http, db):
    """Pix awaiting payment (with its BR Code), shipped, cancelled, refunded, two-step on."""
    admin = new_admin(http)
    shopper = new_shopper(http)
    headers = auth(shopper)
    # Pix: the order waits for payment; the mail carries the copy-and-paste BR Code.
    sku = await new_product(db, 10, price=4_000)
    http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers)
    pix = {**CHECKOUT, "payment": {"method": "pix"}}
    reply = http.post(
        "/v1/checkout", json=pix, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert reply.status_code == 202, reply.text
    waiting = reply.json()
    mail = await _one_mail(embedded_smtp, shopper, f"Pedido {waiting['id']}: pague com Pix")
    assert waiting["pix"]["br_code"] in text_of(mail)
    html = mail.get_body(preferencelist=("html",))
    assert html is not None and waiting["pix"]["br_code"] in html.get_content()
    # Shipped, then refunded, by an operator; another order cancelled by the shopper.
    shipped = checkout(http, await new_product(db, 10), headers)
    done = http.post(f"/v1/admin/orders/{shipped['id']}/ship", json={}, headers=admin)
    assert done.status_code == 200, done.text
    await _one_mail(embedded_smtp, shopper, f"Pedido {shipped['id']} enviado")
    refunded = http.post(f"/v1/admin/orders/{shipped['id']}/refund", headers=admin)
    assert refunded.status_code == 200, refunded.text
    await _one_mail(embedded_smtp, shopper, f"Pedido {shipped['id']} reembolsado")
    cancelled = checkout(http, await new_product(db, 10), headers)
    done = http.post(f"/v1/orders/{cancelled['id']}/cancel", headers=headers)
    assert done.status_code == 200, done.text
    await _one_mail(embedded_smtp, shopper, f"Pedido {cancelled['id']} cancelado")
    # Two-step verification turned on.
    secret = http.post("/v1/auth/mfa/enroll", headers=headers).json()["secret"]
    code = pyotp.TOTP(secret).now()
    confirmed = http.post("/v1/auth/mfa/confirm", json={"code": code}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    await _one_mail(embedded_smtp, shopper, "Verificação em duas etapas ativada")


async def test_an_erased_shopper_gets_nothing(embedded_smtp, http, db):
    shopper = new_shopper(http)
    headers = auth(shopper)
    sku = await new_product(db, 10, price=1_000)
    await wait_for_mail(embedded_smtp, shopper["email"], "Agora")
    # Queue an order mail for a user erased before it goes out: it is dropped, never sent.
    await db.execute(
        "INSERT INTO mail_outbox (dedupe_key, kind, user_id, to_addr, message, next_attempt_at)"
        " VALUES ($1, 'order_confirmed', $2, $3, 'Subject: x\n\nx', now() + interval '2 s')",
        f"test:{uuid.uuid4()}",
        shopper["user_id"],
        shopper["email"],
    )
    assert http.delete("/v1/me", headers=headers).status_code == 204
    del sku

    async def gone() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM mail_outbox WHERE user_id = $1", shopper["user_id"]
        )

    deadline = time.monotonic() + 30
    while not await gone():
        assert time.monotonic() < deadline, "the erased user's mail rows are still there"
        await asyncio.sleep(0.2)
    assert [m for m in mails_to(embedded_smtp, shopper["email"]) if m["Subject"] == "x"] == []


async def test_smtp_down_nothing_lost_delivered_once_after(embedded_smtp, http, db):
    shopper = new_shopper(http)
    await wait_for_mail(embedded_smtp, shopper["email"], "Agora")
    sku = await new_product(db, 10, price=3_000)
    assert infra.stop_smtp(embedded_smtp)
    try:
        order = checkout(http, sku, auth(shopper))
        deadline = time.monotonic() + 60
        while True:
            row = await db.fetchrow(
                "SELECT attempts, sent_at, last_error FROM mail_outbox"
                " WHERE to_addr = $1 AND kind = 'order_confirmed'",
                shopper["email"],
            )
            if row is not None and row["attempts"] >= 2:
                break
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.2)
        assert row["sent_at"] is None and row["last_error"]
    finally:
        infra.start_smtp(embedded_smtp)
    found = await wait_for_mail(embedded_smtp, shopper["email"], order["id"], timeout=90)
    assert len(found) == 1
    await asyncio.sleep(1.5)
    assert len(await wait_for_mail(embedded_smtp, shopper["email"], order["id"], 0)) == 1


# pulsar-lite 0.2.0 sometimes keeps a SIGKILLed consumer registered on a Key_Shared
# subscription and never delivers its keys to the restarted one (fault (a) in DECISIONS,
# "Events consumers"): then the mail is late, not sent twice. Not strict: it passes
# whenever the broker releases the keys, and must never send a mail twice.
async def test_consumer_killed_mid_batch_never_sends_a_mail_twice(embedded_smtp, http, db, ray_ns):
    """Never twice is a hard check; a late mail is an expected failure of the broker.

    pulsar-lite 0.2 can keep a SIGKILLed Key_Shared consumer registered and hold its
    keys back from the restarted one, so a mail may come late (seen once in CI):
    that ends the test as xfail, while a duplicate fails it.
    """
    shoppers = [new_shopper(http) for _ in range(4)]
    orders = []
    host = ray.get_actor(notifications_actor_name(0), namespace=ray_ns)
    for i, shopper in enumerate(shoppers):
        sku = await new_product(db, 10, price=2_000)
        orders.append((shopper, checkout(http, sku, auth(shopper))))
        if i == 1:
            ray.kill(host, no_restart=False)  # mid-batch: Ray restarts it, it resumes
    # All four waited for at once, under one 60 s deadline: held-back keys are not released
    # by waiting longer, and one after the other a late mail cost 90 s each (274 s in CI).
    founds = await asyncio.gather(
        *(wait_for_mail(embedded_smtp, s["email"], o["id"], timeout=60) for s, o in orders)
    )
    late = []
    for (_shopper, order), found in zip(orders, founds, strict=True):
        assert len(found) <= 1, (order["id"], len(found))
        if not found:
            late.append(order["id"])
    await asyncio.sleep(2)
    for shopper, order in orders:
        sent = len(mails_to(embedded_smtp, shopper["email"]))  # welcome + order
        assert sent <= 2, (order["id"], sent)
        assert sent == 2 or order["id"] in late, (order["id"], sent)
    health = ray.get(ray.get_actor(notifications_actor_name(0), namespace=ray_ns).health.remote())
    assert health["running"]
    if late:
        pytest.xfail(f"pulsar-lite held back the killed consumer's keys: {late}")
