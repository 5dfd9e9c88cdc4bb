"""Card payments through the official ``stripe`` SDK against any Stripe-compatible API.

Owns the ``payments`` and ``refunds`` rows (migration 0005). Idempotency is
ours, not the provider's (``localstripe`` ignores ``Idempotency-Key``), and it
is kept in PostgreSQL:

- every call for a key runs under a PostgreSQL advisory lock on that key
  (payments) or on the payment (refunds), held by one pooled connection for
  the whole call, so concurrent calls with one key, from any process,
  serialize: the first reaches the provider, the others then read its
  recorded outcome;
- the row is written ``pending`` before the provider is called, and the
  PaymentIntent's id is committed right after it is created and *before* it
  is confirmed. A retry after a crash or a lost reply retrieves that intent
  and finishes it (confirms it, or records what already happened) instead of
  creating another one. The SDK's idempotency keys are sent as well, which
  closes the window between create and record on a real Stripe;
- a final outcome (``succeeded``, ``declined``) is returned from the row on
  every later call without calling the provider.

Outcomes: ``succeeded``; ``declined`` (a card error, an authentication the
server-side flow cannot perform, or a payment method the provider does not
know), recorded and final; ``failed`` (network, provider or configuration
error), *not* recorded: the row stays ``pending`` and a retry with the same
key resumes it. Contract violations (card data instead of a token, a key
reused with another amount) raise ``ValueError`` before anything is called.

The SDK's native async methods run on an aiohttp session, so nothing blocks
the event loop and no thread is used; one gateway serves one event loop. The
API key and payment tokens are never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import stripe
from pydantic import SecretStr
from stripe.params import PaymentIntentCreateParams

from actors.order.model import Charge, Refund
from actors.order.ports import PaymentGateway
from streams import tracing

log = logging.getLogger(__name__)

PROVIDER = "stripe"
# Advisory lock classes (two-key form: class, hashtext(key)); a hash collision
# only serializes two unrelated calls.
_CHARGE_LOCK = 0x4A60_0005
_REFUND_LOCK = 0x4A60_0006

_TOKEN = re.compile(r"pm_[A-Za-z0-9_]{1,200}")
_DIGIT_RUN = re.compile(r"\d{12,}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_MAX_KEY = 200
_MAX_METADATA_VALUE = 500


def check_token(token: object) -> None:
    """Refuse anything but a provider payment-method id (``pm_...``); never echo it back."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token) or _DIGIT_RUN.search(token):
        raise ValueError("the payment token must be a payment-method id (pm_...), not card data")


def _check_key(key: str) -> None:
    if not key or len(key) > _MAX_KEY:
        raise ValueError(f"idempotency key must be 1..{_MAX_KEY} characters")


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("amount must be a positive integer of minor units")


@asynccontextmanager
async def _locked(conn: asyncpg.Connection, lock_class: int, key: str) -> AsyncIterator[None]:
    await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", lock_class, key)
    try:
        yield
    finally:
        # If this fails, the pool's reset on release runs pg_advisory_unlock_all().
        await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", lock_class, key)


def _provider_error(exc: stripe.StripeError) -> str:
    return (
        f"{type(exc).__name__} (http {exc.http_status}, code {exc.code}, request {exc.request_id})"
    )


class _TracedHTTPClient(stripe.AIOHTTPClient):
    """Stripe's aiohttp client, each call a client span with ``traceparent`` (when traced)."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        with tracing.http_call(PROVIDER, method, url) as (current, extra):
            reply = await super().request_async(method, url, {**headers, **extra}, post_data)
            current.set_attribute("http.response.status_code", reply[1])
            return reply


class StripeCardGateway(PaymentGateway):
    """Card charges and refunds on a Stripe-compatible API, idempotent by our own key."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        api_base: str,
        api_key: str | SecretStr,
        *,
        timeout_s: float = 30.0,
        max_network_retries: int = 2,
        cards_only: bool | None = None,
    ) -> None:
        secret = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._pool = pool
        self._api_base = api_base.rstrip("/")
        # Stripe must be told "cards only" or a server-side confirm demands a
        # return_url for redirect methods; its current API version refuses
        # ``payment_method_types`` and takes ``allowed_payment_method_types``,
        # which localstripe (cards only anyway) refuses. Default: by host.
        if cards_only is None:
            cards_only = (urlsplit(self._api_base).hostname or "").endswith("stripe.com")
        self._cards_only = cards_only
        self._http = _TracedHTTPClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            secret,
            base_addresses={"api": self._api_base},
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    def __repr__(self) -> str:
        return f"StripeCardGateway(api_base={self._api_base!r})"

    async def aclose(self) -> None:
        """Close the HTTP session (call from the event loop that used the gateway)."""
        await self._http.close_async()

    # --- charges ------------------------------------------------------------

    async def charge(
        self, key: str, amount: int, currency: str, token: str, description: str
    ) -> Charge:
        """Charge ``amount`` minor units once per ``key``; a repeat returns the first outcome."""
        check_token(token)
        _check_key(key)
        _check_amount(amount)
        if not _CURRENCY.fullmatch(currency):
            raise ValueError("currency must be a three-letter ISO 4217 code")
        currency = currency.upper()
        async with self._pool.acquire() as conn, _locked(conn, _CHARGE_LOCK, key):
            await conn.execute(
                "INSERT INTO payments (key, provider, status, amount, currency)"
                " VALUES ($1, $2, 'pending', $3, $4) ON CONFLICT (key) DO NOTHING",
                key,
                PROVIDER,
                amount,
                currency,
            )
            row = await conn.fetchrow("SELECT * FROM payments WHERE key = $1", key)
            assert row is not None
            if (row["amount"], row["currency"]) != (amount, currency):
                raise ValueError("idempotency key reused with another amount or currency")
            if row["status"] != "pending":
                return _recorded_charge(row)
            charge = await self._attempt(conn, row, token, description)
        log.info("charge %s: %s %s", key, charge.status, charge.payment_id or "")
        return charge

    async def _attempt(
        self, conn: asyncpg.Connection, row: asyncpg.Record, token: str, description: str
    ) -> Charge:
        key = row["key"]
        intents = self._client.v1.payment_intents
        intent_id: str | None = row["provider_id"]
        try:
            if intent_id is None:
                params: PaymentIntentCreateParams = {
                    "amount": row["amount"],
                    "currency": row["currency"].lower(),
                    "payment_method": token,
                    # localstripe refuses ``description``; metadata reaches both.
                    "metadata": {
                        "agora_key": key,
                        "description": description[:_MAX_METADATA_VALUE],
                    },
                }
                if self._cards_only:
                    params["allowed_payment_method_types"] = ["card"]
                intent = await intents.create_async(
                    params, options={"idempotency_key": f"agora-charge-{key}"}
                )
                intent_id = intent.id
                await conn.execute(
                    "UPDATE payments SET provider_id = $2, updated_at = now() WHERE key = $1",
                    key,
                    intent_id,
                )
            else:
                intent = await intents.retrieve_async(intent_id)
            if intent.status == "requires_confirmation":
                try:
                    intent = await intents.confirm_async(intent_id)
                except stripe.InvalidRequestError:
                    # Confirmed by an earlier attempt whose reply was lost: ask what happened.
                    intent = await intents.retrieve_async(intent_id)
        except stripe.CardError as exc:
            error = exc.error
            return await _final_charge(
                conn,
                row,
                "declined",
                intent_id,
                (error.decline_code if error else None) or exc.code or "card_declined",
                exc.user_message or "The card was declined.",
            )
        except stripe.InvalidRequestError as exc:
            if intent_id is None and await self._unusable_payment_method(exc, token):
                return await _final_charge(
                    conn,
                    row,
                    "declined",
                    None,
                    "invalid_payment_method",
                    "The payment method is not valid.",
                )
            return _unfinished(row, intent_id, exc)
        except stripe.StripeError as exc:
            return _unfinished(row, intent_id, exc)
        return await self._settle(conn, row, intent)

    async def _unusable_payment_method(self, exc: stripe.InvalidRequestError, token: str) -> bool:
        """Whether creating the intent failed because of the payment method itself."""
        if exc.param == "payment_method":
            return True
        if exc.http_status != 404:
            return False
        # localstripe answers a bare 404 for an unknown payment method; make sure
        # it is not a wrong API base before recording a decline.
        try:
            await self._client.v1.payment_methods.retrieve_async(token)
        except stripe.InvalidRequestError as missing:
            return missing.http_status == 404
        except stripe.StripeError:
            return False
        return False

    async def _settle(
        self, conn: asyncpg.Connection, row: asyncpg.Record, intent: stripe.PaymentIntent
    ) -> Charge:
        if intent.status == "succeeded":
            return await _final_charge(conn, row, "succeeded", intent.id, None, None)
        error = intent.last_payment_error
        if intent.status == "requires_payment_method" and error is not None:
            return await _final_charge(
                conn,
                row,
                "declined",
                intent.id,
                error.decline_code or error.code or "card_declined",
                error.message or "The card was declined.",
            )
        if intent.status == "requires_action":
            # Checkout confirms server-side and cannot run 3-D Secure: cancel the
            # intent so it can never complete behind a recorded decline.
            try:
                await self._client.v1.payment_intents.cancel_async(intent.id)
            except stripe.StripeError as exc:
                return _unfinished(row, intent.id, exc)
            return await _final_charge(
                conn,
                row,
                "declined",
                intent.id,
                "authentication_required",
                "The card requires authentication, which this checkout cannot perform.",
            )
        if intent.status == "canceled":
            return await _final_charge(
                conn, row, "declined", intent.id, "canceled", "The payment was canceled."
            )
        log.warning(
            "charge %s: intent %s is %s; left pending", row["key"], intent.id, intent.status
        )
        return Charge(
            "failed",
            None,
            row["amount"],
            row["currency"],
            message=f"payment is {intent.status} at the provider; retry later",
        )

    async def void(self, key: str) -> Charge | None:
        """Settle a charge the caller gave up on; the charge if it succeeded (to refund).

        A pending charge is asked about once more at the provider: a succeeded
        intent is recorded (and returned), anything else is cancelled at the
        provider when it can be and recorded ``declined`` (``abandoned``), so a
        later retry with the key never charges. Nothing recorded: nothing to do.
        """
        async with self._pool.acquire() as conn, _locked(conn, _CHARGE_LOCK, key):
            row = await conn.fetchrow("SELECT * FROM payments WHERE key = $1", key)
            if row is None or row["status"] == "declined":
                return None
            if row["status"] == "succeeded":
                return _recorded_charge(row)
            if row["provider_id"] is not None:
                intents = self._client.v1.payment_intents
                try:
                    intent = await intents.retrieve_async(row["provider_id"])
                    if intent.status == "succeeded":
                        return await _final_charge(conn, row, "succeeded", intent.id, None, None)
                    if intent.status != "canceled":
                        await intents.cancel_async(intent.id)
                except stripe.StripeError as exc:
                    log.warning("void %s: %s; recorded abandoned", key, _provider_error(exc))
            await _final_charge(
                conn,
                row,
                "declined",
                None,
                "abandoned",
                "The payment could not be completed in time.",
            )
        return None

    # --- refunds --------------------------------------------------------------

    async def refund(self, key: str, payment_id: str, amount: int) -> Refund:
        """Refund ``amount`` of a succeeded payment once per ``key``."""
        _check_key(key)
        _check_amount(amount)
        async with self._pool.acquire() as conn:
            payment = await conn.fetchrow(
                "SELECT key, status, amount FROM payments WHERE provider = $1 AND provider_id = $2",
                PROVIDER,
                payment_id,
            )
            if payment is None or payment["status"] != "succeeded":
                raise ValueError("only a payment that succeeded through this gateway is refunded")
            async with _locked(conn, _REFUND_LOCK, payment["key"]):
                row = await conn.fetchrow("SELECT * FROM refunds WHERE key = $1", key)
                if row is None:
                    refunded = await conn.fetchval(
                        "SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_key = $1",
                        payment["key"],
                    )
                    if refunded + amount > payment["amount"]:
                        raise ValueError("refunds would exceed the amount paid")
                    row = await conn.fetchrow(
                        "INSERT INTO refunds (key, payment_key, status, amount)"
                        " VALUES ($1, $2, 'pending', $3) RETURNING *",
                        key,
                        payment["key"],
                        amount,
                    )
                    assert row is not None
                    resumed = False
                else:
                    resumed = True
                if (row["payment_key"], row["amount"]) != (payment["key"], amount):
                    raise ValueError("idempotency key reused for another payment or amount")
                if row["status"] == "succeeded":
                    return Refund("succeeded", row["provider_id"], amount)
                result = await self._refund_at_provider(conn, key, payment_id, amount, resumed)
        log.info("refund %s of %s: %s %s", key, payment_id, result.status, result.refund_id or "")
        return result

    async def _refund_at_provider(
        self, conn: asyncpg.Connection, key: str, payment_id: str, amount: int, resumed: bool
    ) -> Refund:
        refunds = self._client.v1.refunds
        try:
            found = await self._find_refund(payment_id, key) if resumed else None
            if found is None:
                found = await refunds.create_async(
                    params={
                        "payment_intent": payment_id,
                        "amount": amount,
                        "metadata": {"agora_key": key},
                    },
                    options={"idempotency_key": f"agora-refund-{key}"},
                )
        except stripe.StripeError as exc:
            log.warning("refund %s: %s; left pending", key, _provider_error(exc))
            return Refund("failed", None, amount)
        if found.status not in ("succeeded", "pending"):
            log.warning("refund %s: %s is %s at the provider", key, found.id, found.status)
            return Refund("failed", found.id, amount)
        await conn.execute(
            "UPDATE refunds SET status = 'succeeded', provider_id = $2, updated_at = now()"
            " WHERE key = $1",
            key,
            found.id,
        )
        return Refund("succeeded", found.id, amount)

    async def _find_refund(self, payment_id: str, key: str) -> stripe.Refund | None:
        """A refund an earlier, unfinished attempt made for ``key``, if the provider has one."""
        page = await self._client.v1.refunds.list_async(
            params={"payment_intent": payment_id, "limit": 100}
        )
        async for refund in page.auto_paging_iter():
            metadata: dict[str, str] = refund.metadata.to_dict() if refund.metadata else {}
            if metadata.get("agora_key") == key and refund.status in ("succeeded", "pending"):
                return refund
        return None


def _recorded_charge(row: asyncpg.Record) -> Charge:
    return Charge(
        row["status"],
        row["provider_id"],
        row["amount"],
        row["currency"],
        row["decline_code"],
        row["message"],
    )


async def _final_charge(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    status: str,
    provider_id: str | None,
    decline_code: str | None,
    message: str | None,
) -> Charge:
    await conn.execute(
        "UPDATE payments SET status = $2, provider_id = coalesce($3, provider_id),"
        " decline_code = $4, message = $5, updated_at = now() WHERE key = $1",
        row["key"],
        status,
        provider_id,
        decline_code,
        message,
    )
    recorded = await conn.fetchrow("SELECT * FROM payments WHERE key = $1", row["key"])
    assert recorded is not None
    return _recorded_charge(recorded)


def _unfinished(row: asyncpg.Record, intent_id: str | None, exc: stripe.StripeError) -> Charge:
    log.warning(
        "charge %s (intent %s): %s; left pending", row["key"], intent_id, _provider_error(exc)
    )
    return Charge(
        "failed",
        None,
        row["amount"],
        row["currency"],
        message=f"payment provider unavailable: {type(exc).__name__}",
    )
