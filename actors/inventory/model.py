"""Stock: the pure ``StockItem`` state (on hand, reservations with a TTL) and the
``InventoryShard`` actor.

``available = on_hand - reserved`` and it never goes negative: a reservation
that does not fit is refused, and on_hand cannot be set or adjusted below what
is reserved. Reserve, release and commit are idempotent by reservation id
(repeats answer as the first call did) and durable: answered only after the
batch holding the change has committed (group commit). Expired reservations
are released by a sweeper and ignored by reads before that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.messages import Rejected
from streams.events import INVENTORY_CHANGED, INVENTORY_LOW_STOCK, Envelope, make_event

FINISHED_KEPT = 256


@dataclass
class Reservation:
    quantity: int
    expires_ms: int
    order_id: str | None = None


@dataclass
class StockItem:
    """Stock of one SKU. Commands return events, or a ``Rejected``."""

    sku: str
    on_hand: int = 0
    reservations: dict[str, Reservation] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)  # reservation id -> committed|released
    committed_units: int = 0
    known: bool = True
    version: int = 0

    def reserved(self, now_ms: int) -> int:
        return sum(r.quantity for r in self.reservations.values() if r.expires_ms > now_ms)

    def available(self, now_ms: int) -> int:
        return self.on_hand - self.reserved(now_ms)

    def reserve(
        self, rid: str, quantity: int, now_ms: int, ttl_ms: int, order_id: str | None = None
    ) -> list[Envelope] | Rejected:
        if not self.known:
            return Rejected("unknown-sku", f"{self.sku} is not a product")
        if quantity < 1:
            return Rejected("invalid", "quantity must be at least 1")
        if rid in self.reservations or self.finished.get(rid) == "committed":
            return []
        if rid in self.finished:
            return Rejected("unknown-reservation", f"reservation {rid} was already released")
        self.sweep(now_ms)
        available = self.available(now_ms)
        if quantity > available:
            return Rejected(
                "insufficient", f"only {available} of {self.sku} left", available=available
            )
        self.reservations[rid] = Reservation(quantity, now_ms + ttl_ms, order_id)
        self.version += 1
        return []

    def release(self, rid: str, now_ms: int) -> list[Envelope] | Rejected:
        if self.reservations.pop(rid, None) is None:
            if rid in self.finished:
                return []
            return Rejected("unknown-reservation", f"no reservation {rid}")
        self._finish(rid, "released")
        self.version += 1
        return []

    def commit(self, rid: str, now_ms: int, threshold: int) -> list[Envelope] | Rejected:
        """Turn a reservation into a sale: on_hand goes down by its quantity."""
        if self.finished.get(rid) == "committed":
            return []
        reservation = self.reservations.get(rid)
        if reservation is None:
            return Rejected("unknown-reservation", f"no live reservation {rid}")
        del self.reservations[rid]
        before = self.on_hand
        self.on_hand -= reservation.quantity
        self.committed_units += reservation.quantity
        self._finish(rid, "committed")
        self.version += 1
        return self._changed(now_ms, "sale", -reservation.quantity, before, threshold)

    def return_units(
        self, rid: str, quantity: int, now_ms: int, threshold: int
    ) -> list[Envelope] | Rejected:
        """Put sold units back (a cancelled order), once per ``rid``."""
        if self.finished.get(rid) == "returned":
            return []
        if quantity < 1:
            return Rejected("invalid", "quantity must be at least 1")
        before = self.on_hand
        self.on_hand += quantity
        self.committed_units -= quantity
        self._finish(rid, "returned")
        self.version += 1
        return self._changed(now_ms, "return", quantity, before, threshold)

    def set_on_hand(self, on_hand: int, now_ms: int, threshold: int) -> list[Envelope] | Rejected:
        return self.adjust(on_hand - self.on_hand, "set", now_ms, threshold)

    def adjust(
        self, delta: int, reason: str, now_ms: int, threshold: int
    ) -> list[Envelope] | Rejected:
        if not self.known:
            return Rejected("unknown-sku", f"{self.sku} is not a product")
        self.sweep(now_ms)
        if self.on_hand + delta < self.reserved(now_ms):
            return Rejected(
                "below-reserved",
                f"on hand cannot go below the {self.reserved(now_ms)} units reserved",
                available=self.available(now_ms),
            )
        before = self.on_hand
        self.on_hand += delta
        self.version += 1
        return self._changed(now_ms, reason, delta, before, threshold)

    def sweep(self, now_ms: int) -> int:
        """Release expired reservations; returns how many."""
        expired = [rid for rid, r in self.reservations.items() if r.expires_ms <= now_ms]
        for rid in expired:
            del self.reservations[rid]
            self._finish(rid, "released")
        if expired:
            self.version += 1
        return len(expired)

    def _finish(self, rid: str, how: str) -> None:
        self.finished[rid] = how
        while len(self.finished) > FINISHED_KEPT:
            self.finished.pop(next(iter(self.finished)))

    def _changed(
        self, now_ms: int, reason: str, delta: int, before: int, threshold: int
    ) -> list[Envelope]:
        """``inventory.changed``; ``inventory.low_stock`` when on hand falls to the threshold."""
        available = self.available(now_ms)
        payload = {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "available": available,
            "delta": delta,
            "reason": reason,
        }
        events = [make_event(INVENTORY_CHANGED, self.sku, payload, now_ms)]
        if self.on_hand <= threshold < before:
            events.append(
                make_event(
                    INVENTORY_LOW_STOCK,
                    self.sku,
                    {"sku": self.sku, "on_hand": self.on_hand, "threshold": threshold},
                    now_ms,
                )
            )
        return events

    def view(self, now_ms: int) -> dict[str, Any]:
        reserved = self.reserved(now_ms)
        return {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "reserved": reserved,
            "available": self.on_hand - reserved,
        }

    def to_doc(self) -> dict[str, Any]:
        return {
            "on_hand": self.on_hand,
            "reservations": {
                rid: [r.quantity, r.expires_ms, r.order_id] for rid, r in self.reservations.items()
            },
            "finished": self.finished,
            "committed_units": self.committed_units,
        }

    @classmethod
    def from_doc(cls, sku: str, doc: dict[str, Any], version: int) -> StockItem:
        return cls(
            sku,
            int(doc["on_hand"]),
            {rid: Reservation(q, e, o) for rid, (q, e, o) in doc.get("reservations", {}).items()},
            dict(doc.get("finished", {})),
            int(doc.get("committed_units", 0)),
            True,
            version,
        )


# --- replies and many-line commands (one call per shard for an order's lines) ------------


@dataclass(frozen=True)
class StockView:
    """What a single-SKU command answers: the SKU's stock after it."""

    sku: str
    on_hand: int
    reserved: int
    available: int


@dataclass(frozen=True)
class Audit:
    """Invariant inputs: on hand, live reservations and units committed so far."""

    on_hand: int
    committed_units: int
    reserved: int
    live: dict[str, int]


@dataclass(frozen=True)
class LineHold:
    """One line of a many-line command: ``quantity`` units of ``sku`` under reservation ``rid``."""

    sku: str
    rid: str
    quantity: int = 0


@dataclass(frozen=True)
class Shortage:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True)
class Held:
    """Every line asked of this shard is held (or already was, or already sold)."""

    rids: tuple[str, ...]


@dataclass(frozen=True)
class Short:
    """Nothing was held on this shard: these lines do not fit."""

    lines: tuple[Shortage, ...]


@dataclass(frozen=True)
class Done:
    """A many-line commit, release or return went through (idempotently)."""

    count: int


def view_of(item: StockItem, now_ms: int) -> StockView:
    reserved = item.reserved(now_ms)
    return StockView(item.sku, item.on_hand, reserved, item.on_hand - reserved)


def reserve_all(
    items: dict[str, StockItem],
    lines: tuple[LineHold, ...],
    now_ms: int,
    ttl_ms: int,
    order_id: str | None,
) -> tuple[Shortage, ...]:
    """Hold every line or none (all-or-nothing on one shard); the short lines, or ``()``.

    A line whose reservation is already live or already sold counts as held, so
    a repeat after a crash holds nothing twice.
    """
    short = []
    for line in lines:
        item = items[line.sku]
        if line.rid in item.reservations or item.finished.get(line.rid) == "committed":
            continue
        item.sweep(now_ms)
        available = item.available(now_ms) if item.known else 0
        if not item.known or line.rid in item.finished or line.quantity > available:
            short.append(Shortage(line.sku, line.quantity, max(0, available)))
    if short:
        return tuple(short)
    for line in lines:
        result = items[line.sku].reserve(line.rid, line.quantity, now_ms, ttl_ms, order_id)
        assert not isinstance(result, Rejected), result
    return ()


def committable(items: dict[str, StockItem], lines: tuple[LineHold, ...]) -> Rejected | None:
    """Whether every reservation can be committed (live, or committed already)."""
    for line in lines:
        item = items[line.sku]
        if line.rid not in item.reservations and item.finished.get(line.rid) != "committed":
            return Rejected("unknown-reservation", f"no live reservation {line.rid}")
    return None
