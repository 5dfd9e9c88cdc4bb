"""The ports the checkout saga needs; here the payment gateway port (any provider).

Adapters: ``cluster.adapters.stripe_card`` (card payments through the official
``stripe`` SDK against any Stripe-compatible API; locally ``localstripe``).
Card numbers never reach our servers: callers pass a payment-method token
(``pm_...``) created by the provider's client-side SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class Charge:
    """The outcome of a charge attempt; ``declined`` is a value, not an exception."""

    status: Literal["succeeded", "declined", "failed"]
    payment_id: str | None
    amount: int
    currency: str
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Refund:
    status: Literal["succeeded", "failed"]
    refund_id: str | None
    amount: int


class PaymentGateway(Protocol):
    """One provider. ``key`` makes a charge idempotent: the same key never charges twice."""

    async def charge(
        self, key: str, amount: int, currency: str, token: str, description: str
    ) -> Charge: ...

    async def refund(self, key: str, payment_id: str, amount: int) -> Refund: ...
