"""The ports the checkout saga needs: carts, stock, pricing (and coupons), fraud, payments.

Each port answers a frozen value from ``actors.order.model`` or the one
``Rejected``; an exception means the call may be retried (the shell backs off
and, after ``saga_step_deadline_s``, gives up and compensates). Every call is
idempotent by the key it is given (reservation ids, the order id as the
payment key, the order id for coupon redemption), so a step repeated after a
crash or a timeout does nothing twice. Adapters live in
``cluster.adapters.order_ports`` and are built once per shard process by
``cluster.bootstrap``; card numbers never reach our servers (callers pass a
payment-method token, ``pm_...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from actors.fraud.rules import Screening
from actors.messages import Rejected
from actors.order.model import (
    Ack,
    CartSnapshot,
    Charge,
    OutOfStock,
    PixCharge,
    PixExpired,
    PixPaid,
    Priced,
    Refund,
    StockHeld,
    StockLine,
)

__all__ = ["Charge", "PaymentGateway", "Ports", "Refund"]


class Carts(Protocol):
    async def snapshot(self, cart_id: str) -> CartSnapshot: ...

    async def clear(self, cart_id: str) -> Ack: ...


class Stock(Protocol):
    async def reserve(
        self, order_id: str, lines: tuple[StockLine, ...], long_hold: bool
    ) -> StockHeld | OutOfStock:
        """All lines or none: one call per inventory shard involved, in parallel."""
        ...

    async def commit(self, lines: tuple[StockLine, ...]) -> Ack | Rejected: ...

    async def release(self, lines: tuple[StockLine, ...]) -> Ack: ...

    async def restock(self, lines: tuple[StockLine, ...]) -> Ack: ...


class Pricing(Protocol):
    async def price(
        self,
        cart: CartSnapshot,
        user_id: str,
        shipping_method: str,
        country: str,
        state: str,
        postal_code: str,
    ) -> Priced | Rejected: ...

    async def redeem(self, code: str, user_id: str, order_id: str) -> Ack | Rejected:
        """Count one use of ``code`` for the order, atomically against its limits."""
        ...

    async def unredeem(self, code: str, order_id: str) -> Ack: ...


class Fraud(Protocol):
    async def screen(
        self,
        order_id: str,
        user_id: str,
        total: int,
        quantities: tuple[int, ...],
        country: str,
        skus: tuple[str, ...] = (),  # one per quantity (the model counts resale categories)
        shipping_method: str = "standard",
    ) -> Screening: ...

    async def warm(self) -> None:
        """Get ready to screen (e.g. reach the model) before the first order needs it."""
        ...

    def stats(self) -> dict[str, Any]:
        """How screening went so far (for the shard's stats)."""
        ...


class PaymentGateway(Protocol):
    """One card provider. ``key`` makes a charge idempotent: the same key never charges twice."""

    async def charge(
        self, key: str, amount: int, currency: str, token: str, description: str
    ) -> Charge: ...

    async def refund(self, key: str, payment_id: str, amount: int) -> Refund: ...


class Payments(Protocol):
    """Card and Pix. A card charge answers ``succeeded`` or ``declined`` (else raises)."""

    async def charge(self, key: str, amount: int, currency: str, token: str) -> Charge: ...

    async def open_pix(self, key: str, amount: int) -> PixCharge: ...

    async def pix_paid(self, key: str, amount: int) -> bool:
        """Record the Pix payment of ``amount`` for ``key``. Idempotent: True when the charge
        is paid with ``amount``, recorded by this call or an earlier one (the shard may have
        died before storing that answer); False for another amount or no pending charge."""
        ...

    async def expire_pix(self, key: str, amount: int) -> PixPaid | PixExpired:
        """The Pix charge for ``key`` is past its expiry: ``PixPaid`` when it was paid with
        ``amount`` (recorded, but the order never learned it: the shard was killed after the
        gateway answered and no retry of the webhook reached a live shard; or found paid at
        the PSP, every webhook lost), else ``PixExpired`` once it can no longer be paid (a
        pending charge is expired atomically against a racing webhook). Raises while the
        PSP cannot say whether it was paid (the order stays awaiting: the next expiry sweep
        asks again; after a bounded time the adapter expires it anyway)."""
        ...

    async def refund(
        self, key: str, method: str, payment_id: str | None, amount: int
    ) -> Refund: ...

    async def void(self, key: str, method: str) -> Ack:
        """Make sure a charge whose outcome was never learned cannot complete (or is refunded)."""
        ...


@dataclass(frozen=True)
class Ports:
    """Everything the order shard talks to, built once per shard process."""

    carts: Carts
    stock: Stock
    pricing: Pricing
    fraud: Fraud
    payments: Payments
