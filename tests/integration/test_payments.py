"""The Stripe card gateway against the real embedded PSP (localstripe) and PostgreSQL.

Provider-side facts (how many PaymentIntents carry a key, their status) are
read back through the official SDK, never assumed from our own rows.
"""

import asyncio
import uuid

import pytest
import stripe

from actors.order.ports import Charge, Refund
from cluster.adapters.stripe_card import StripeCardGateway
from cluster.settings import get_settings

pytestmark = pytest.mark.integration

VISA = "pm_card_visa"
# localstripe declines charges on this Stripe test id (card 4000000000000341),
# as Stripe's test mode does; it does not know ``pm_card_chargeDeclined``.
DECLINING = "pm_card_chargeCustomerFail"


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture(scope="module")
async def gateway(db, services):
    gw = StripeCardGateway(db, services.stripe, get_settings().stripe_api_key)
    yield gw
    await gw.aclose()


@pytest.fixture(scope="module")
async def provider(services):
    """A client of our own that reads what the PSP holds."""
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        get_settings().stripe_api_key.get_secret_value(),
        base_addresses={"api": services.stripe},
        http_client=http,
    )
    yield client
    await http.close_async()


async def intents_for(provider, key: str) -> list:
    page = await provider.v1.payment_intents.list_async(params={"limit": 100})
    return [
        intent
        async for intent in page.auto_paging_iter()
        if intent.metadata and intent.metadata.to_dict().get("agora_key") == key
    ]


async def payment_row(db, key: str):
    return await db.fetchrow("SELECT * FROM payments WHERE key = $1", key)


async def test_visa_succeeds_and_is_recorded(gateway, provider, db):
    key = new_key()
    charge = await gateway.charge(key, 12_345, "BRL", VISA, "Agora order test")
    assert charge.status == "succeeded"
    assert charge.payment_id and charge.payment_id.startswith("pi_")
    assert (charge.amount, charge.currency, charge.decline_code) == (12_345, "BRL", None)
    row = await payment_row(db, key)
    assert (row["status"], row["provider_id"], row["amount"], row["currency"]) == (
        "succeeded",
        charge.payment_id,
        12_345,
        "BRL",
    )
    intent = await provider.v1.payment_intents.retrieve_async(charge.payment_id)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 12_345, "brl")
    assert intent.metadata.to_dict()["agora_key"] == key


async def test_a_declined_card_is_a_recorded_value(gateway, provider, db):
    key = new_key()
    charge = await gateway.charge(key, 5_000, "BRL", DECLINING, "Agora order test")
    assert charge.status == "declined"
    assert charge.decline_code == "card_declined"
    assert charge.message
    row = await payment_row(db, key)
    assert (row["status"], row["decline_code"]) == ("declined", "card_declined")
    intent = await provider.v1.payment_intents.retrieve_async(row["provider_id"])
    assert intent.status == "requires_payment_method"
    assert await gateway.charge(key, 5_000, "BRL", DECLINING, "Agora order test") == charge
    assert len(await intents_for(provider, key)) == 1


async def test_charge_declined_test_token_is_declined(gateway, db):
    # Stripe test mode declines pm_card_chargeDeclined (card_declined);
    # localstripe does not know it and answers 404, which is a declined,
    # invalid payment method here. Either way: declined, recorded, final.
    key = new_key()
    charge = await gateway.charge(key, 5_000, "BRL", "pm_card_chargeDeclined", "test")
    assert charge.status == "declined"
    assert charge.decline_code in ("card_declined", "generic_decline", "invalid_payment_method")
    assert (await payment_row(db, key))["status"] == "declined"


async def test_the_same_key_twice_charges_once(gateway, provider):
    key = new_key()
    first = await gateway.charge(key, 2_500, "BRL", VISA, "test")
    second = await gateway.charge(key, 2_500, "BRL", VISA, "test")
    assert first.status == "succeeded"
    assert second == first
    intents = await intents_for(provider, key)
    assert [i.id for i in intents] == [first.payment_id]


async def test_concurrent_charges_with_one_key_make_one_intent(gateway, provider, db):
    key = new_key()
    charges = await asyncio.gather(
        *[gateway.charge(key, 7_700, "BRL", VISA, "test") for _ in range(5)]
    )
    assert all(c == charges[0] for c in charges)
    assert charges[0].status == "succeeded"
    intents = await intents_for(provider, key)
    assert [i.id for i in intents] == [charges[0].payment_id]
    assert (await payment_row(db, key))["status"] == "succeeded"


async def test_a_crash_between_create_and_confirm_is_resumed(gateway, provider, db):
    """The row holds the intent's id but no outcome: the retry confirms that intent."""
    key = new_key()
    intent = await provider.v1.payment_intents.create_async(
        params={
            "amount": 3_000,
            "currency": "brl",
            "payment_method": VISA,
            "metadata": {"agora_key": key},
        }
    )
    await db.execute(
        "INSERT INTO payments (key, provider, provider_id, status, amount, currency)"
        " VALUES ($1, 'stripe', $2, 'pending', 3000, 'BRL')",
        key,
        intent.id,
    )
    charge = await gateway.charge(key, 3_000, "BRL", VISA, "test")
    assert (charge.status, charge.payment_id) == ("succeeded", intent.id)
    assert [i.id for i in await intents_for(provider, key)] == [intent.id]


async def test_an_unreachable_provider_fails_and_leaves_the_payment_pending(gateway, provider, db):
    key = new_key()
    down = StripeCardGateway(
        db, "http://127.0.0.1:9", get_settings().stripe_api_key, max_network_retries=0
    )
    try:
        charge = await down.charge(key, 4_000, "BRL", VISA, "test")
    finally:
        await down.aclose()
    assert (charge.status, charge.payment_id) == ("failed", None)
    assert (await payment_row(db, key))["status"] == "pending"
    retried = await gateway.charge(key, 4_000, "BRL", VISA, "test")
    assert retried.status == "succeeded"
    assert len(await intents_for(provider, key)) == 1


async def test_a_key_reused_with_another_amount_is_refused(gateway):
    key = new_key()
    assert (await gateway.charge(key, 1_000, "BRL", VISA, "test")).status == "succeeded"
    with pytest.raises(ValueError, match="another amount"):
        await gateway.charge(key, 1_001, "BRL", VISA, "test")


@pytest.mark.parametrize(
    "token", ["4242424242424242", "pm_4242424242424242", "tok_visa", "", "pm_card visa"]
)
async def test_anything_but_a_payment_method_id_is_refused_before_any_call(gateway, db, token):
    key = new_key()
    with pytest.raises(ValueError) as refused:
        await gateway.charge(key, 1_000, "BRL", token, "test")
    if token:
        assert token not in str(refused.value)
    assert await payment_row(db, key) is None


async def test_refund_is_idempotent(gateway, provider, db):
    key = new_key()
    charge = await gateway.charge(key, 9_900, "BRL", VISA, "test")
    assert charge.payment_id is not None
    refund_key = f"{key}:refund"
    first = await gateway.refund(refund_key, charge.payment_id, 9_900)
    assert first.status == "succeeded"
    assert first.refund_id and first.refund_id.startswith("re_")
    again = await gateway.refund(refund_key, charge.payment_id, 9_900)
    assert again == first == Refund("succeeded", first.refund_id, 9_900)
    page = await provider.v1.refunds.list_async(params={"payment_intent": charge.payment_id})
    assert [r.id for r in page.data] == [first.refund_id]
    row = await db.fetchrow("SELECT * FROM refunds WHERE key = $1", refund_key)
    assert (row["status"], row["payment_key"], row["provider_id"], row["amount"]) == (
        "succeeded",
        key,
        first.refund_id,
        9_900,
    )


async def test_concurrent_refunds_with_one_key_refund_once(gateway, provider):
    charge = await gateway.charge(new_key(), 6_000, "BRL", VISA, "test")
    assert charge.payment_id is not None
    refunds = await asyncio.gather(
        *[gateway.refund("r-" + charge.payment_id, charge.payment_id, 2_000) for _ in range(4)]
    )
    assert all(r == refunds[0] for r in refunds)
    page = await provider.v1.refunds.list_async(params={"payment_intent": charge.payment_id})
    assert [r.id for r in page.data] == [refunds[0].refund_id]


async def test_partial_refunds_never_exceed_the_payment(gateway):
    charge = await gateway.charge(new_key(), 5_000, "BRL", VISA, "test")
    assert charge.payment_id is not None
    assert (await gateway.refund(new_key(), charge.payment_id, 3_000)).status == "succeeded"
    with pytest.raises(ValueError, match="exceed"):
        await gateway.refund(new_key(), charge.payment_id, 2_001)
    assert (await gateway.refund(new_key(), charge.payment_id, 2_000)).status == "succeeded"


async def test_a_declined_payment_is_not_refunded(gateway):
    charge = await gateway.charge(new_key(), 5_000, "BRL", DECLINING, "test")
    assert isinstance(charge, Charge) and charge.payment_id is not None
    with pytest.raises(ValueError):
        await gateway.refund(new_key(), charge.payment_id, 5_000)
