"""Pix charges at a PSP (locally ``cluster.pix_sandbox``), idempotent by our own key.

Owns the ``payments`` rows with provider ``pix`` (migration 0005). A charge is
recorded ``pending`` with its txid (derived from the key, so every retry asks
the PSP for the same charge) before the PSP is called, under the same kind of
PostgreSQL advisory lock as card charges; the PSP answers an existing txid
with the charge it already has, so a repeat returns the first BR Code and
expiry. The row stays ``pending`` until the PSP's signed webhook is checked
by the caller and ``mark_paid`` records ``succeeded``, or ``mark_expired``
records it ``declined`` (decline code ``expired``). Both only move a pending
row (a conditional ``UPDATE``: of a webhook racing the expiry, one wins and the
other finds the row settled), so a late or replayed webhook changes nothing.
``expire`` is what the order's expiry asks: it answers ``paid`` when the payment
was recorded but its order never learned it (its shard killed after the gateway
answered, and no retry of the webhook reached a live shard). A charge still
pending here is first looked up at the PSP (``GET /v1/charges/{txid}``, the same
session and timeout): paid there with the order's amount (every webhook lost
before one was recorded), it is recorded as ``mark_paid`` would and answered
``paid``; expired there (or unknown to it) it is expired here; when the PSP cannot
say (unreachable, failing, or still showing it pending) nothing changes and the
answer is ``unknown``, so the caller asks again later, until the charge's row is
``give_up_after_s`` old: then it is expired anyway, with an error logged (the
PSP may have been paid: operators reconcile). The PSP has no call to cancel a
charge; it refuses a payment once the charge's own ``expires_at`` has passed.
``mark_paid`` answers a repeat of the payment it recorded (same
amount) ``already-recorded``, apart from ``refused`` (another amount, no such
charge, expired): a caller that died between the first answer and storing it
(an order shard killed by Ray) records the payment when the webhook is retried,
instead of reading a wrong amount.

Contract violations (a key reused with another amount or by another
provider, a bad webhook URL) raise ``ValueError``; an unreachable or failing
PSP raises ``PixUnavailable`` and a retry with the same key resumes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from streams import tracing

log = logging.getLogger(__name__)

PROVIDER = "pix"
CURRENCY = "BRL"
_CHARGE_LOCK = 0x4A60_0007
_MAX_KEY = 200

# What ``mark_paid`` answers: this call recorded the payment; an earlier call recorded the
# same amount (a retried webhook); or nothing recorded (another amount, or not pending).
PixPaidOutcome = Literal["recorded", "already-recorded", "refused"]
# What ``expire`` answers: the charge is expired (by this call or an earlier one); it is
# paid with the order's amount (the order must record the payment, not expire); the PSP
# could not say whether it was paid (the charge stays pending: ask again later); or none of
# these (another amount recorded or paid at the PSP, or no such charge).
PixExpiryOutcome = Literal["expired", "paid", "unknown", "refused"]
# Statuses of a charge at the PSP after which it can never be paid.
_UNPAYABLE = ("expired",)


class PixUnavailable(RuntimeError):
    """The PSP could not be reached or failed; the charge stays pending and may be retried."""


def txid_for(key: str) -> str:
    """The PSP transaction id of ``key``: 25 hex characters (100 bits) of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:25]


def _check(key: str, amount: int) -> None:
    if not key or len(key) > _MAX_KEY:
        raise ValueError(f"idempotency key must be 1..{_MAX_KEY} characters")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("amount must be a positive integer of centavos")


@asynccontextmanager
async def _locked(conn: asyncpg.Connection, key: str) -> AsyncIterator[None]:
    await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", _CHARGE_LOCK, key)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", _CHARGE_LOCK, key)


class PixGateway:
    """Pix charges on one PSP; one gateway serves one event loop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        api_base: str,
        *,
        pix_key: str | None = None,
        timeout_s: float = 10.0,
        give_up_after_s: float = 86_400.0,
    ) -> None:
        self._pool = pool
        self._give_up_after_s = give_up_after_s
        self._api_base = api_base.rstrip("/")
        self._pix_key = pix_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PixGateway(api_base={self._api_base!r})"

    async def aclose(self) -> None:
        """Close the HTTP session (call from the event loop that used the gateway)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def create_charge(
        self, key: str, amount: int, expires_at: int, webhook_url: str
    ) -> dict[str, Any]:
        """A pending Pix charge of ``amount`` centavos, once per ``key``: txid, BR Code, expiry."""
        _check(key, amount)
        if urlsplit(webhook_url).scheme not in ("http", "https"):
            raise ValueError("webhook_url must be an http(s) URL")
        txid = txid_for(key)
        async with self._pool.acquire() as conn, _locked(conn, key):
            await conn.execute(
                "INSERT INTO payments (key, provider, provider_id, status, amount, currency)"
                " VALUES ($1, $2, $3, 'pending', $4, $5) ON CONFLICT (key) DO NOTHING",
                key,
                PROVIDER,
                txid,
                amount,
                CURRENCY,
            )
            row = await conn.fetchrow("SELECT * FROM payments WHERE key = $1", key)
            assert row is not None
            if (row["provider"], row["amount"]) != (PROVIDER, amount):
                raise ValueError("idempotency key reused with another provider or amount")
            body: dict[str, Any] = {
                "txid": txid,
                "amount": amount,
                "expires_at": expires_at,
                "webhook_url": webhook_url,
            }
            if self._pix_key:
                body["pix_key"] = self._pix_key
            charge = await self._post("/v1/charges", body)
        log.info("pix charge %s: txid %s, %s", key, txid, row["status"])
        return {
            "txid": charge["txid"],
            "br_code": charge["br_code"],
            "expires_at": charge["expires_at"],
            "amount": charge["amount"],
        }

    async def mark_paid(self, key: str, amount: int) -> PixPaidOutcome:
        """Record a verified ``pix.paid`` for ``key``: ``recorded`` when this call moved the
        pending charge of ``amount`` to ``succeeded``, ``already-recorded`` when it was
        ``succeeded`` with ``amount`` before (a retry: nothing changes), else ``refused``."""
        done = await self._pool.fetchval(
            "UPDATE payments SET status = 'succeeded', updated_at = now()"
            " WHERE key = $1 AND provider = $2 AND status = 'pending' AND amount = $3"
            " RETURNING 1",
            key,
            PROVIDER,
            amount,
        )
        if done is not None:
            return "recorded"
        # A statement of its own (a fresh snapshot): a concurrent call that recorded it has
        # committed by now (the UPDATE above waited for its row lock).
        row = await self._pool.fetchrow(
            "SELECT status, amount FROM payments WHERE key = $1 AND provider = $2",
            key,
            PROVIDER,
        )
        if row is not None and (row["status"], row["amount"]) == ("succeeded", amount):
            return "already-recorded"
        return "refused"

    async def mark_expired(self, key: str) -> bool:
        """Record that the charge for ``key`` expired unpaid; False unless it was pending."""
        done = await self._pool.fetchval(
            "UPDATE payments SET status = 'declined', decline_code = 'expired',"
            " message = 'The Pix charge expired unpaid.', updated_at = now()"
            " WHERE key = $1 AND provider = $2 AND status = 'pending' RETURNING 1",
            key,
            PROVIDER,
        )
        return done is not None

    async def expire(self, key: str, amount: int) -> PixExpiryOutcome:
        """Settle the charge for ``key`` at its order's expiry, atomically against
        ``mark_paid`` (both move only a pending row). A pending row is first looked up at
        the PSP: ``paid`` when it is ``succeeded`` with ``amount`` (recorded by a webhook,
        or by this call from the PSP's answer: the order records the payment instead of
        expiring); ``expired`` when this call declined it (the PSP says it expired, or has
        no such charge; or the row is ``give_up_after_s`` old and the PSP still cannot say)
        or it was declined as expired before (a repeat after a kill); ``unknown`` when the
        PSP cannot say whether it was paid (the row stays pending: ask again); else
        ``refused``."""
        row = await self._pool.fetchrow(
            "SELECT status, amount, decline_code,"
            " now() - created_at >= make_interval(secs => $3) AS overdue"
            " FROM payments WHERE key = $1 AND provider = $2",
            key,
            PROVIDER,
            float(self._give_up_after_s),
        )
        if row is None:
            return "refused"
        if row["status"] == "pending":
            asked = await self._ask_psp(key, amount, bool(row["overdue"]))
            if asked is not None:
                return asked
        # A fresh snapshot: a ``mark_paid`` that won the row lock has committed by now.
        row = await self._pool.fetchrow(
            "SELECT status, amount, decline_code FROM payments WHERE key = $1 AND provider = $2",
            key,
            PROVIDER,
        )
        if row is None:
            return "refused"
        if (row["status"], row["amount"]) == ("succeeded", amount):
            return "paid"
        if (row["status"], row["decline_code"]) == ("declined", "expired"):
            return "expired"
        return "refused"

    async def _ask_psp(self, key: str, amount: int, overdue: bool) -> PixExpiryOutcome | None:
        """What the PSP says of the pending charge for ``key``, applied to its row; None
        when the row was settled meanwhile (the caller reads it again)."""
        txid = txid_for(key)
        unknown: str | None = None
        try:
            charge = await self._get(f"/v1/charges/{txid}")
        except PixUnavailable as exc:
            charge, unknown = None, str(exc)
        if unknown is None:
            status = None if charge is None else charge.get("status")
            if charge is None or status in _UNPAYABLE:  # no such charge, or past paying
                await self.mark_expired(key)  # False: a racing webhook won; read the row
                return None
            if status == "paid":
                if charge.get("amount") != amount:
                    log.error(
                        "pix charge %s (txid %s) paid at the PSP with %r, not %d: not recorded",
                        key,
                        txid,
                        charge.get("amount"),
                        amount,
                    )
                    return "refused"
                if await self.mark_paid(key, amount) == "recorded":
                    log.warning("pix payment %s (txid %s) found at the PSP: recorded", key, txid)
                return None  # recorded by this call or a racing webhook: read the row again
            unknown = f"the PSP shows it {status}"  # still payable there
        if not overdue:
            log.warning("pix charge %s (txid %s) not expired yet: %s", key, txid, unknown)
            return "unknown"
        log.error(
            "pix charge %s (txid %s) expired unconfirmed after %.0f s (%s): it may have been"
            " paid at the PSP; reconcile it there",
            key,
            txid,
            self._give_up_after_s,
            unknown,
        )
        await self.mark_expired(key)
        return None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self._call("POST", path, body)
        if status in (400, 409, 422):
            detail = answer.get("error") if isinstance(answer, dict) else None
            raise ValueError(f"Pix PSP refused the charge: {detail or status}")
        if status not in (200, 201) or not isinstance(answer, dict):
            raise PixUnavailable(f"Pix PSP answered http {status}")
        return answer

    async def _get(self, path: str) -> dict[str, Any] | None:
        """The PSP's resource at ``path``; None when it has no such resource (404)."""
        status, answer = await self._call("GET", path, None)
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, dict):
            raise PixUnavailable(f"Pix PSP answered http {status}")
        return answer

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        url = self._api_base + path
        try:
            with tracing.http_call("pix", method, url) as (current, headers):
                async with self._http.request(method, url, json=body, headers=headers) as reply:
                    answer = await reply.json(content_type=None)
                    status = reply.status
                current.set_attribute("http.response.status_code", status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PixUnavailable(f"Pix PSP unavailable: {type(exc).__name__}") from exc
        return status, answer
