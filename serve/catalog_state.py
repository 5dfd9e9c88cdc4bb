"""What an API replica holds in memory to show products and price carts without I/O.

Held per replica (one copy per process):
  * pricing tables (promotions, shipping rates, tax rules) and coupon
    definitions: loaded at start-up, reloaded (in the background, never on a
    request) on every ``pricing.changed`` event, on a reader gap, and every
    ``REFRESH_S`` as a safety net;
  * product facts (name, description, price, category, weight, images,
    attributes) of every product: loaded at start-up; a SKU not held yet is
    read once (a cold miss) and kept; ``product.updated`` drops a product so
    the next read takes the new facts;
  * available units per SKU: the last ``inventory.changed`` event of the
    inventory shard that owns the SKU; before the first event, the
    written-behind ``inventory`` row read at start-up or on the cold miss.

Usage counts of coupons are not held: the cart shows a coupon as applicable
from its definition; applying a code reads the counts, and checkout redeems
atomically. Staleness bounds are in docs/DECISIONS.md ("Actors own their
state (spine v2)").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from actors.cart.model import CartView
from actors.pricing.engine import Coupon, Destination, Line, Quote, Rejected, quote
from cluster.adapters import pricing_store
from cluster.adapters.pricing_store import DEFAULT_WEIGHT_G, ProductFacts, Tables
from streams.events import INVENTORY_CHANGED, PRICING_CHANGED, PRODUCT_UPDATED, Envelope

log = logging.getLogger(__name__)

REFRESH_S = 300.0
MISSING_TTL_S = 2.0
TOPIC_EVENTS = (PRICING_CHANGED, PRODUCT_UPDATED, INVENTORY_CHANGED)


class CatalogState:
    """The replica's in-memory catalog and pricing; ``db`` is an asyncpg pool."""

    def __init__(self, db: Any, store: Any = pricing_store, clock: Any = time.time) -> None:
        self.db = db
        self.store = store  # the loading port: ``cluster.adapters.pricing_store``
        self.clock = clock
        self.tables = Tables()
        self.coupons: dict[str, Coupon] = {}
        self.products: dict[str, ProductFacts] = {}
        self.available: dict[str, int] = {}
        self.loaded = False
        self.pricing_loads = 0
        self.events = 0
        self._missing: dict[str, float] = {}
        self._missing_coupons: dict[str, float] = {}
        self._pricing_wanted = 0
        self._pricing_done = 0
        self._pricing_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    def _now(self) -> int:
        return int(self.clock())

    # --- loading ---------------------------------------------------------------------

    async def warm(self) -> None:
        """The start-up load: pricing, coupons, every product, last written stock."""
        load = await self.store.load_catalog(self.db, self._now())
        self.tables, self.coupons = load.tables, load.coupons
        self.products.update(load.products)
        for sku, units in load.available.items():
            self.available.setdefault(sku, units)  # an event seen meanwhile is newer
        self.loaded = True
        self.pricing_loads += 1
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def reload_pricing(self) -> None:
        """Reload tables and coupons; calls that overlap share one load started after them."""
        self._pricing_wanted += 1
        wanted = self._pricing_wanted
        async with self._pricing_lock:
            if self._pricing_done >= wanted:
                return
            started = self._pricing_wanted
            self.tables, self.coupons = await self.store.load_pricing(self.db, self._now())
            self._missing_coupons.clear()
            self._pricing_done = started
            self.pricing_loads += 1

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.reload_pricing()
            except Exception as exc:  # the next event or refresh tries again
                log.warning("pricing refresh failed: %s", exc)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self) -> None:
        try:
            await self.reload_pricing()
        except Exception as exc:
            log.warning("pricing reload failed: %s", exc)

    # --- events ----------------------------------------------------------------------

    def on_event(self, event: Envelope) -> None:
        """Apply one event (on the replica's loop); nothing here waits."""
        self.events += 1
        if event.type == INVENTORY_CHANGED.name:
            available = event.payload.get("available")
            if isinstance(available, int):
                self.available[event.key] = available
        elif event.type == PRODUCT_UPDATED.name:
            self.products.pop(event.key, None)
            self._missing.pop(event.key, None)
        elif event.type == PRICING_CHANGED.name:
            self._background(self._reload_quietly())

    def on_gap(self) -> None:
        """Events may have been missed: reload pricing (stock self-corrects on its next event)."""
        self._background(self._reload_quietly())

    # --- reads -----------------------------------------------------------------------

    async def product(self, sku: str) -> tuple[ProductFacts, int] | None:
        """A product and its available units: from memory; a cold miss reads it once."""
        facts = self.products.get(sku)
        if facts is not None:
            return facts, self.available.get(sku, 0)
        if self._missing.get(sku, 0.0) > time.monotonic():
            return None
        found = await self.store.load_product(self.db, sku)
        if found is None:
            self._remember_missing(self._missing, sku)
            return None
        facts, units = found
        self.products[sku] = facts
        self.available.setdefault(sku, units)
        return facts, self.available[sku]

    async def facts(self, skus: Sequence[str]) -> dict[str, ProductFacts]:
        """Facts of the cart's SKUs; any not held are read in one query (a cold miss)."""
        absent = [
            s
            for s in skus
            if s not in self.products and self._missing.get(s, 0.0) <= time.monotonic()
        ]
        if absent:
            found = await self.store.load_products(self.db, absent)
            for sku in absent:
                if sku in found:
                    self.products[sku], units = found[sku]
                    self.available.setdefault(sku, units)
                else:
                    self._remember_missing(self._missing, sku)
        return {s: self.products[s] for s in skus if s in self.products}

    async def coupon(self, code: str) -> Coupon | None:
        """A coupon definition: from memory; a code not held is read once (a cold miss)."""
        key = pricing_store.normalise_code(code)
        held = self.coupons.get(key)
        if held is not None or self._missing_coupons.get(key, 0.0) > time.monotonic():
            return held
        found = await self.store.load_coupon(self.db, key)
        if found is None:
            self._remember_missing(self._missing_coupons, key)
            return None
        self.coupons[key] = found
        return found

    @staticmethod
    def _remember_missing(missing: dict[str, float], key: str) -> None:
        if len(missing) > 10_000:
            missing.clear()
        missing[key] = time.monotonic() + MISSING_TTL_S

    # --- pricing ---------------------------------------------------------------------

    def lines(self, view: CartView, facts: dict[str, ProductFacts]) -> list[Line]:
        """The cart's lines as engine ``Line``s (prices as snapshotted in the cart)."""
        out = []
        for line in view.lines:
            fact = facts.get(line.sku)
            out.append(
                Line(
                    sku=line.sku,
                    category=fact.category if fact is not None else "",
                    unit_price=line.unit_price,
                    quantity=line.quantity,
                    weight_g=fact.weight_g if fact is not None else DEFAULT_WEIGHT_G,
                )
            )
        return out

    def quote(
        self,
        lines: list[Line],
        coupon: Coupon | None,
        code: str | None,
        user_id: str | None,
        shipping_method: str | None = None,
        destination: Destination | None = None,
    ) -> Quote | Rejected:
        """Price ``lines`` now with the held tables (pure; no I/O)."""
        coupons = {coupon.code: coupon} if coupon is not None else {}
        return quote(
            lines,
            self.tables.promotions,
            coupon_code=code,
            coupons=coupons,
            user_id=user_id,
            shipping_method=shipping_method,
            destination=destination,
            rates=self.tables.rates,
            tax_rules=self.tables.tax_rules,
            now=self._now(),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "products": len(self.products),
            "coupons": len(self.coupons),
            "promotions": len(self.tables.promotions),
            "pricing_loads": self.pricing_loads,
            "events": self.events,
        }
