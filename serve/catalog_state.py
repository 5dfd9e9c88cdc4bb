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
    written-behind ``inventory`` row read at start-up or on the cold miss;
  * the search index (``serve.search.index``) over every product that is not
    retired, with the signals it sorts by (created, rating, units sold):
    built at start-up; every ``product.created/updated/deleted/reviewed``
    event re-reads that one product in the background and replaces (or
    removes) it, so an edit is searchable within the event's delivery time;
    the lag is in ``/metrics`` (``agora_search_index_lag_seconds``). Units
    sold follow orders: every ``order.confirmed/cancelled/refunded`` event
    queues its order, and one background query per window
    (``POPULARITY_WINDOW_S``, longer when the query is slow) re-reads the units
    sold of every SKU in the queued orders' lines.

Usage counts of coupons are not held: the cart shows a coupon as applicable
from its definition; applying a code reads the counts, and checkout redeems
atomically. Staleness bounds are in docs/DECISIONS.md ("Actors own their
state (spine v2)").
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import Counter, Gauge

from actors.cart.model import CartView
from actors.pricing.engine import Coupon, Destination, Line, Quote, Rejected, quote
from cluster.adapters import catalog_search, pricing_store
from cluster.adapters.catalog_search import Signals
from cluster.adapters.pricing_store import DEFAULT_WEIGHT_G, ProductFacts, Tables
from serve.search.index import Doc, SearchIndex
from streams.events import (
    EVENT_TYPES,
    INVENTORY_CHANGED,
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_REFUNDED,
    PRICING_CHANGED,
    PRODUCT_CREATED,
    PRODUCT_DELETED,
    PRODUCT_REVIEWED,
    PRODUCT_UPDATED,
    SEARCH_REINDEX_REQUESTED,
    Envelope,
)

log = logging.getLogger(__name__)

REFRESH_S = 300.0
MISSING_TTL_S = 2.0
RESYNC_DELAY_S = 1.0
# One event type per topic a replica follows (pricing, catalog, inventory, orders).
TOPIC_EVENTS = (PRICING_CHANGED, PRODUCT_UPDATED, INVENTORY_CHANGED, ORDER_CONFIRMED)
PRODUCT_EVENTS = frozenset(
    e.name for e in (PRODUCT_CREATED, PRODUCT_UPDATED, PRODUCT_DELETED, PRODUCT_REVIEWED)
)
# An order's units start or stop counting as sold (confirmed/shipped orders count;
# shipping keeps them counted, so ``order.shipped`` changes nothing).
SOLD_EVENTS = frozenset(e.name for e in (ORDER_CONFIRMED, ORDER_CANCELLED, ORDER_REFUNDED))
ORDER_TOPIC_EVENTS = frozenset(
    name for name, kind in EVENT_TYPES.items() if kind.domain == ORDER_CONFIRMED.domain
)
POPULARITY_WINDOW_S = 0.5  # order events within a window share one query
POPULARITY_COST_RATIO = 10.0  # ...and a window lasts at least 10x that query's time
POPULARITY_RETRY_MAX_S = 10.0

INDEX_LAG = Gauge(
    "agora_search_index_lag_seconds",
    "Time from a product event's occurrence to its change being searchable on this replica",
)
INDEX_UPDATES = Counter(
    "agora_search_index_updates_total", "Products re-read into this replica's search index"
)
INDEX_REBUILDS = Counter(
    "agora_search_index_rebuilds_total", "Full index rebuilds on request (agora search reindex)"
)
POPULARITY_READS = Counter(
    "agora_search_popularity_reads_total",
    "Queries re-reading units sold for the SKUs of orders confirmed, cancelled or refunded",
)
INDEX_DOCUMENTS = Gauge("agora_search_index_documents", "Products in this replica's search index")
INDEX_BUILD_PROGRESS = Gauge(
    "agora_search_index_build_progress",
    "Share of the products indexed by this replica's running (or last) full build, 0..1",
)
BUILD_CHUNK = 2000  # products indexed between two progress updates


def _occurred_s(event: Envelope) -> float | None:
    """The event's ``occurred_at`` (``YYYY-MM-DDTHH:MM:SS.mmmZ``) in epoch seconds."""
    try:
        whole = calendar.timegm(time.strptime(event.occurred_at[:19], "%Y-%m-%dT%H:%M:%S"))
        return whole + int(event.occurred_at[20:23]) / 1000
    except (ValueError, IndexError):
        return None


def search_doc(facts: ProductFacts, signals: Signals | None) -> Doc:
    """The index's view of a product."""
    attributes = facts.attributes if isinstance(facts.attributes, dict) else {}
    return Doc(
        sku=facts.sku,
        name=facts.name,
        description=facts.description,
        category=facts.category,
        price_minor=facts.price_minor,
        attributes=attributes,
        created=signals.created if signals else 0.0,
        rating=signals.rating if signals else 0.0,
        rating_count=signals.rating_count if signals else 0,
        popularity=signals.popularity if signals else 0.0,
    )


def _build_index(docs: list[Doc]) -> SearchIndex:
    """A new index over ``docs``; progress in ``agora_search_index_build_progress``
    (what ``agora search reindex`` shows)."""
    index = SearchIndex(capacity=max(1024, len(docs)))
    INDEX_BUILD_PROGRESS.set(0.0)
    for start in range(0, len(docs), BUILD_CHUNK):
        index.build(docs[start : start + BUILD_CHUNK])
        INDEX_BUILD_PROGRESS.set(min(start + BUILD_CHUNK, len(docs)) / len(docs))
    INDEX_BUILD_PROGRESS.set(1.0)
    return index


class CatalogState:
    """The replica's in-memory catalog and pricing; ``db`` is an asyncpg pool."""

    def __init__(
        self,
        db: Any,
        store: Any = pricing_store,
        clock: Any = time.time,
        search_store: Any = catalog_search,
    ) -> None:
        self.db = db
        self.store = store  # the loading port: ``cluster.adapters.pricing_store``
        self.search_store = search_store  # ``cluster.adapters.catalog_search``
        self.index = SearchIndex()
        self.index_generation = 0
        self.retired: set[str] = set()
        self._product_loads: dict[str, int] = {}
        self._touched: set[str] | None = None  # SKUs re-read while a rebuild runs
        self._resync_pending = False
        self._sold_orders: set[str] = set()  # named by order events, not re-read yet
        self._sales_reader: asyncio.Task[None] | None = None
        self._sales_read_after = 0.0  # monotonic time the next sales query may start
        self._reads = 0  # numbers signal reads in the order they start
        # SKU -> (read number, units sold) of the newest read applied since the last build's:
        # an older read landing later never overwrites it, and a new index takes it over.
        self._sold: dict[str, tuple[int, float]] = {}
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
        await self.rebuild_index()
        self.loaded = True
        self.pricing_loads += 1
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def rebuild_index(self) -> int:
        """Index every held product that is not retired (start-up, reindex); returns the count."""
        # Products re-read from the signals read on are re-read again into the new index:
        # the read below may predate their change.
        self._touched = set()
        number = self._read_number()
        try:
            try:
                signals = await self.search_store.load_signals(self.db)
            except Exception as exc:  # text search still works; sorts by signals wait a resync
                log.warning("search signals load failed: %s", exc)
                signals = {}
            retired = {sku for sku, s in signals.items() if s.retired}
            docs = [
                search_doc(facts, signals.get(sku))
                for sku, facts in self.products.items()
                if sku not in retired
            ]
            # Built off the loop (pure Python, so it shares the GIL, but requests interleave).
            index = await asyncio.get_running_loop().run_in_executor(None, _build_index, docs)
        finally:
            touched, self._touched = self._touched or set(), None
        self.index, self.retired = index, retired
        for sku, (read, units) in list(self._sold.items()):
            if read > number:  # a sale re-read after the build's read: the new index has it
                index.set_popularity(sku, units)
            else:
                del self._sold[sku]
        for sku in touched:  # changed while the new index was built from the older snapshot
            self._background(self._refresh_quietly(sku, None))
        self.index_generation += 1  # response caches key on (generation, index.version)
        INDEX_DOCUMENTS.set(len(index))
        return len(index)

    async def refresh_product(self, sku: str, occurred_s: float | None = None) -> None:
        """Re-read one product and its signals into the catalog and the index.

        Overlapping refreshes of one SKU: only the last one started applies
        (it read the newest row), so the order loads finish in does not matter.
        """
        ticket = self._product_loads.get(sku, 0) + 1
        self._product_loads[sku] = ticket
        found = await self.store.load_product(self.db, sku)
        number = self._read_number()
        signals = (await self.search_store.load_signals(self.db, [sku])).get(sku)
        if self._product_loads.get(sku) != ticket:
            return
        del self._product_loads[sku]
        if self._touched is not None:
            self._touched.add(sku)
        if found is None or signals is None or signals.retired:
            self.products.pop(sku, None)
            self.index.remove(sku)
            if found is not None:
                self.retired.add(sku)
        else:
            facts, units = found
            self.products[sku] = facts
            self.available.setdefault(sku, units)
            self.retired.discard(sku)
            sold = self._newest_sales(sku, number, signals.popularity)
            self.index.upsert(search_doc(facts, replace(signals, popularity=sold)))
        self._missing.pop(sku, None)
        INDEX_UPDATES.inc()
        INDEX_DOCUMENTS.set(len(self.index))
        if occurred_s is not None:
            INDEX_LAG.set(max(0.0, time.time() - occurred_s))

    async def _refresh_quietly(self, sku: str, occurred_s: float | None) -> None:
        try:
            await self.refresh_product(sku, occurred_s)
        except Exception as exc:  # the next event, gap or reindex brings it back
            self._product_loads.pop(sku, None)
            log.warning("product refresh of %s failed: %s", sku, exc)

    def _read_number(self) -> int:
        self._reads += 1
        return self._reads

    def _newest_sales(self, sku: str, number: int, units: float) -> float:
        """Units sold to index for ``sku``: read ``number``'s, unless a read started later
        has already been applied (reads overlap, and land in any order)."""
        held = self._sold.get(sku)
        if held is not None and held[0] > number:
            return held[1]
        self._sold[sku] = (number, units)
        return units

    async def refresh_popularity(self, orders: Sequence[str]) -> int:
        """Re-read units sold of every SKU in ``orders``' lines into the index (one query);
        returns how many SKUs changed.

        Units are re-read, never added, so an event seen twice, or an order the start-up
        load already counted, counts once.
        """
        number = self._read_number()
        sold = await self.search_store.load_popularity(self.db, orders)
        POPULARITY_READS.inc()
        changed = 0
        for sku, units in sold.items():
            changed += self.index.set_popularity(sku, self._newest_sales(sku, number, units))
        return changed

    def _follow_sales(self) -> None:
        """One reader of the queued orders' sales at a time (started by an order event)."""
        if self._sales_reader is None or self._sales_reader.done():
            self._sales_reader = asyncio.get_running_loop().create_task(self._read_sales())

    async def _read_sales(self) -> None:
        failures = 0
        while self._sold_orders:
            # Events arriving meanwhile join this query; a slow query spaces the next ones.
            wait = max(POPULARITY_WINDOW_S, self._sales_read_after - time.monotonic())
            await asyncio.sleep(wait)
            orders, self._sold_orders = self._sold_orders, set()
            started = time.monotonic()
            try:
                await self.refresh_popularity(sorted(orders))
            except Exception as exc:  # kept for the next try (a gap or reindex heals too)
                failures += 1
                self._sold_orders |= orders
                backoff = min(POPULARITY_RETRY_MAX_S, POPULARITY_WINDOW_S * 2**failures)
                self._sales_read_after = time.monotonic() + backoff
                log.warning("units sold re-read of %d orders failed: %s", len(orders), exc)
                continue
            failures = 0
            cost = time.monotonic() - started
            self._sales_read_after = started + POPULARITY_COST_RATIO * cost

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
        if event.type in ORDER_TOPIC_EVENTS:
            # Not counted in ``events``, a key of cached list bodies: only units sold
            # show, and they move the index version when they change.
            if event.type in SOLD_EVENTS:
                self._sold_orders.add(event.key)
                self._follow_sales()
            return
        self.events += 1
        if event.type == INVENTORY_CHANGED.name:
            available = event.payload.get("available")
            if isinstance(available, int):
                self.available[event.key] = available
        elif event.type in PRODUCT_EVENTS:
            # The page's next read takes the new facts (a cold miss); the index follows
            # once the background re-read lands.
            if event.type != PRODUCT_REVIEWED.name:
                self.products.pop(event.key, None)
            self._missing.pop(event.key, None)
            self._background(self._refresh_quietly(event.key, _occurred_s(event)))
        elif event.type == PRICING_CHANGED.name:
            self._background(self._reload_quietly())
        elif event.type == SEARCH_REINDEX_REQUESTED.name:
            self._background(self._resync_now())

    def on_gap(self) -> None:
        """Events may have been missed: reload pricing and products, rebuild the index
        (stock self-corrects on its next event)."""
        self._background(self._reload_quietly())
        if not self._resync_pending:
            self._resync_pending = True
            self._background(self._resync_quietly())

    async def resync_products(self) -> int:
        """Re-read every product and rebuild the index (after a gap, or a reindex request)."""
        INDEX_BUILD_PROGRESS.set(0.0)  # reading the catalog is the build's first part
        load = await self.store.load_catalog(self.db, self._now())
        self.products.update(load.products)
        return await self.rebuild_index()

    async def _resync_now(self) -> None:
        try:
            count = await self.resync_products()
            INDEX_REBUILDS.inc()
            log.info("search index rebuilt on request: %d products", count)
        except Exception as exc:
            log.warning("requested reindex failed: %s", exc)

    async def _resync_quietly(self) -> None:
        await asyncio.sleep(RESYNC_DELAY_S)  # a reconnect storm's gaps share one resync
        self._resync_pending = False
        try:
            await self.resync_products()
        except Exception as exc:
            log.warning("product resync failed: %s", exc)

    # --- reads -----------------------------------------------------------------------

    async def product(self, sku: str) -> tuple[ProductFacts, int] | None:
        """A product and its available units: from memory; a cold miss reads it once.

        A retired product is None (it cannot be shown or added; orders keep their copy).
        """
        if sku in self.retired:
            return None
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
            "indexed": len(self.index),
        }
