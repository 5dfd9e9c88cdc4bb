"""Product-view events for the analytics funnel, off the read path.

``record_view`` is called by ``GET /v1/products/{sku}`` after the page is
ready: it names the visitor without any I/O (a bearer token's signature and
expiry checked in memory, without the revocation lookup; else the anonymous
cart token's HMAC; else nobody), builds a ``product.viewed`` event and hands
it to this replica's ``BackgroundPublisher`` (bounded queue, own thread,
straight to Pulsar; no PostgreSQL, no outbox). Views dropped because the queue
is full or Pulsar failed are counted in ``agora_product_views_dropped_total``.

A signed-in shopper's view is also noted, without waiting, in this replica's
``RecentViewBuffer`` (``serve.recent``), which writes it to the shopper's
recent-views list in Redis within a quarter of a second, so it shapes their
``GET /v1/recommendations`` (issue 9).
"""

from __future__ import annotations

import logging
import time

from fastapi import Request
from prometheus_client import Counter

from actors.cart.model import user_cart_id
from serve.auth.tokens import Claims
from serve.recent import RecentViewBuffer
from serve.runtime import Runtime
from streams.events import PRODUCT_VIEWED, make_event, topic_for
from streams.publisher import BackgroundPublisher

log = logging.getLogger(__name__)

VIEWS = Counter(
    "agora_product_views_total", "Product-view events published to Pulsar by this replica"
)
VIEWS_DROPPED = Counter(
    "agora_product_views_dropped_total",
    "Product-view events dropped (queue full or Pulsar failed); the page was served anyway",
    ["reason"],
)

_publisher: BackgroundPublisher | None = None
_recent: RecentViewBuffer | None = None


def _drop(reason: str) -> None:
    VIEWS_DROPPED.labels(reason).inc()


def publisher(rt: Runtime) -> BackgroundPublisher | None:
    """This replica's view publisher (built on first use), or None when views are off."""
    global _publisher
    if _publisher is None and rt.settings.views_enabled and rt.urls is not None:
        _publisher = BackgroundPublisher(
            rt.urls.pulsar, rt.settings.views_buffer, on_drop=_drop, on_sent=VIEWS.inc
        )
    return _publisher


def recent_buffer(rt: Runtime) -> RecentViewBuffer | None:
    """This replica's recent-views buffer (built on first use), or None without models."""
    global _recent
    if _recent is None and rt.settings.models_enabled and rt.redis is not None:
        s = rt.settings
        _recent = RecentViewBuffer(rt.redis, s.recommend_recent_s, s.views_buffer)
    return _recent


def visitor(rt: Runtime, request: Request) -> tuple[str | None, str | None]:
    """``(visitor, user_id)`` of the caller, from what it presented, with no I/O."""
    header = request.headers.get("authorization")
    if header is not None and rt.verifier is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            claims = rt.verifier.verify(token.strip(), int(time.time()))
            if isinstance(claims, Claims):
                return user_cart_id(claims.sub), claims.sub
    cart_token = request.headers.get("x-cart-token")
    if cart_token is not None and rt.tokens is not None:
        cart_id = rt.tokens.cart_id(cart_token)
        if cart_id is not None:
            return cart_id, None
    return None, None


def record_view(rt: Runtime, request: Request, sku: str) -> None:
    """Offer a ``product.viewed`` event and note a signed-in view; never raises, never waits."""
    try:
        sink = publisher(rt)
        recent = recent_buffer(rt)
        if sink is None and recent is None:
            return
        who, user_id = visitor(rt, request)
        if user_id is not None and recent is not None:
            recent.note(user_id, sku)  # for recommendations; no I/O here
        if sink is None:
            return
        s = rt.settings
        event = make_event(
            PRODUCT_VIEWED,
            who or sku,
            {"sku": sku, "visitor": who, "user_id": user_id},
            int(time.time() * 1000),
        )
        sink.offer(topic_for(PRODUCT_VIEWED.name, s.events_tenant, s.events_namespace), event)
    except Exception as exc:  # analytics must never fail a product page
        _drop("error")
        log.warning("could not record a product view: %s", type(exc).__name__)
