"""The event envelope and every public event type: the only contract between parts.

An event is created once, in the handler that made the change, with its id
(UUIDv7, time-ordered) and its timestamp; consumers rely on nothing else.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import msgspec


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 62 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What travels on Pulsar: ``key`` is the aggregate id and the message key.

    ``trace_id`` (32 hex digits) and ``span_id`` (16) name the OpenTelemetry span
    that produced the event, set when it was made inside a sampled trace
    (``streams.tracing.stamp``), so a consumer continues that trace.
    """

    id: str
    type: str
    version: int
    occurred_at: str
    key: str
    trace_id: str | None = None
    payload: dict[str, Any] = {}
    span_id: str | None = None


class EventType(msgspec.Struct, frozen=True):
    name: str
    version: int
    domain: str  # topic suffix: persistent://<tenant>/<namespace>/<domain>


EVENT_TYPES: dict[str, EventType] = {}


def _declare(name: str, version: int, domain: str) -> EventType:
    event_type = EventType(name, version, domain)
    EVENT_TYPES[name] = event_type
    return event_type


CART_ITEM_ADDED = _declare("cart.item_added", 1, "carts")
CART_ITEM_QUANTITY_SET = _declare("cart.item_quantity_set", 1, "carts")
CART_ITEM_REMOVED = _declare("cart.item_removed", 1, "carts")
CART_CLEARED = _declare("cart.cleared", 1, "carts")

INVENTORY_CHANGED = _declare("inventory.changed", 1, "inventory")
INVENTORY_LOW_STOCK = _declare("inventory.low_stock", 1, "inventory")

ORDER_CREATED = _declare("order.created", 1, "orders")
ORDER_PENDING_REVIEW = _declare("order.pending_review", 1, "orders")
ORDER_CONFIRMED = _declare("order.confirmed", 1, "orders")
ORDER_FAILED = _declare("order.failed", 1, "orders")
ORDER_CANCELLED = _declare("order.cancelled", 1, "orders")
ORDER_SHIPPED = _declare("order.shipped", 1, "orders")
ORDER_REFUNDED = _declare("order.refunded", 1, "orders")
PAYMENT_PROCESSED = _declare("payment.processed", 1, "payments")
PAYMENT_REFUNDED = _declare("payment.refunded", 1, "payments")

USER_REGISTERED = _declare("user.registered", 1, "users")
USER_UPDATED = _declare("user.updated", 1, "users")
USER_ERASED = _declare("user.erased", 1, "users")
AUTH_LOGGED_IN = _declare("auth.logged_in", 1, "auth")
AUTH_LOGIN_FAILED = _declare("auth.login_failed", 1, "auth")
AUTH_REFRESH_REUSED = _declare("auth.refresh_reused", 1, "auth")
AUTH_SESSION_REVOKED = _declare("auth.session_revoked", 1, "auth")
AUTH_MFA_ENABLED = _declare("auth.mfa_enabled", 1, "auth")

# Spine v2: the coupon is part of the cart; replicas hold pricing and products in memory.
CART_COUPON_APPLIED = _declare("cart.coupon_applied", 1, "carts")
CART_COUPON_REMOVED = _declare("cart.coupon_removed", 1, "carts")
CART_ABSORBED = _declare("cart.absorbed", 1, "carts")
PRICING_CHANGED = _declare("pricing.changed", 1, "pricing")
PRODUCT_UPDATED = _declare("product.updated", 1, "catalog")
# Catalog search and admin (issue 10): every product change, and a review that moves a rating.
PRODUCT_CREATED = _declare("product.created", 1, "catalog")
PRODUCT_DELETED = _declare("product.deleted", 1, "catalog")
PRODUCT_REVIEWED = _declare("product.reviewed", 1, "catalog")
# `agora search reindex`: every API replica re-reads the catalog and rebuilds its index.
SEARCH_REINDEX_REQUESTED = _declare("search.reindex_requested", 1, "catalog")

# Events consumers (issue 11). ``auth.password_changed`` {user_id, reason: "reset"};
# ``order.awaiting_payment`` is the order payload (a Pix order waiting to be paid);
# ``admin.action`` {actor, action, target, details}: an operator did something (audit).
AUTH_PASSWORD_CHANGED = _declare("auth.password_changed", 1, "auth")
ORDER_AWAITING_PAYMENT = _declare("order.awaiting_payment", 1, "orders")
ADMIN_ACTION = _declare("admin.action", 1, "admin")
# Analytics (issue 11): a product page was read (API, fire-and-forget, may be dropped);
# {sku, visitor ("user:<id>" or the anonymous cart id, or null), user_id}. Its own
# topic, so the replicas following "catalog" never see the view traffic.
PRODUCT_VIEWED = _declare("product.viewed", 1, "views")


def topic_for(event_type: str, tenant: str = "agora", namespace: str = "events") -> str:
    """The topic of an event type under ``tenant``/``namespace`` (settings, passed in)."""
    domain = EVENT_TYPES[event_type].domain
    return f"persistent://{tenant}/{namespace}/{domain}"


def make_event(
    event_type: EventType,
    key: str,
    payload: dict[str, Any],
    occurred_at_ms: int,
    trace_id: str | None = None,
) -> Envelope:
    """Build an envelope; the caller passes the time so the core stays clock-free."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(occurred_at_ms / 1000))
    return Envelope(
        id=str(uuid7(occurred_at_ms)),
        type=event_type.name,
        version=event_type.version,
        occurred_at=f"{iso}.{occurred_at_ms % 1000:03d}Z",
        key=key,
        trace_id=trace_id,
        payload=payload,
    )


def encode(envelope: Envelope) -> bytes:
    return msgspec.json.encode(envelope)


def decode(data: bytes) -> Envelope:
    return msgspec.json.decode(data, type=Envelope)
