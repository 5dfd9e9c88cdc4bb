"""The cart, session and inventory shells driven through their protocol, Ray forbidden.

Each shell runs on the in-memory store and pool of ``test_shell_in_memory`` with a
fake clock; every change must reach the store (the durable path) with its events
in the outbox, and a second shell on the same store (a restart) must see it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from actors.cart.actor import CartShardImpl
from actors.cart.model import CartViewLine
from actors.inventory.actor import InventoryShardImpl
from actors.inventory.model import Audit, Done, Held, LineHold, Short, StockItem, StockView
from actors.messages import Rejected
from actors.session.actor import SessionShardImpl
from actors.shard import ShardEnv
from tests.unit.test_shell_in_memory import MemoryPool, MemoryStore

T0 = 1_700_000_000_000


def make_env(store: MemoryStore, pool: MemoryPool, now: list[int], **extra: Any) -> ShardEnv:
    settings = SimpleNamespace(
        flush_batch_size=100,
        flush_interval_ms=5,
        shard_max_keys=1000,
        cart_max_lines=3,
        cart_max_quantity=5,
        events_tenant="agora",
        events_namespace="events",
        reservation_ttl_s=60,
        sweep_interval_ms=10,
        low_stock_threshold=2,
        **extra,
    )

    async def open_pool() -> MemoryPool:
        return pool

    return ShardEnv(settings=settings, store=store, open_pool=open_pool, clock=lambda: now[0])


def event_types(pool: MemoryPool) -> list[str]:
    return [row[3] for row in pool.outbox]


# --- cart ---------------------------------------------------------------------------------


async def test_cart_shell_edits_lines_and_coupon_and_clears_durably() -> None:
    store, pool, now = MemoryStore(), MemoryPool(), [T0]
    shell = CartShardImpl("agora:cart:0", make_env(store, pool, now))
    await shell.add_item("c1", "A", "Apple", 100, 1)
    await shell.add_item("c1", "B", "Book", 250, 1)
    view = await shell.set_quantity("c1", "A", 4)
    assert not isinstance(view, Rejected)
    assert [(x.sku, x.quantity) for x in view.lines] == [("A", 4), ("B", 1)]
    assert view.subtotal == 4 * 100 + 250
    refused = await shell.set_quantity("c1", "Z", 1)
    assert isinstance(refused, Rejected) and refused.code == "not-in-cart"
    gone = await shell.remove_item("c1", "B")
    assert not isinstance(gone, Rejected) and [x.sku for x in gone.lines] == ["A"]
    missing = await shell.remove_item("c1", "B")
    assert isinstance(missing, Rejected) and missing.code == "not-in-cart"
    coupon = await shell.apply_coupon("c1", " save10 ")
    assert not isinstance(coupon, Rejected) and coupon.coupon == "SAVE10"
    bad = await shell.apply_coupon("c1", "no spaces allowed")
    assert isinstance(bad, Rejected) and bad.code == "invalid-coupon-code"
    assert (await shell.remove_coupon("c1")).coupon is None
    assert (await shell.remove_coupon("c1")).coupon is None  # nothing to forget: no event
    cleared = await shell.clear("c1")  # answered once durable
    assert cleared.lines == () and store.rows["c1"][1] == cleared.version
    assert store.rows["c1"][0]["lines"] == []
    assert sorted(event_types(pool)) == [  # one batch may hold several versions
        "cart.cleared",
        "cart.coupon_applied",
        "cart.coupon_removed",
        "cart.item_added",
        "cart.item_added",
        "cart.item_quantity_set",
        "cart.item_removed",
    ]
    await shell.drain()


async def test_cart_shell_absorbs_a_guest_cart_within_the_rules_once_durable() -> None:
    store, pool, now = MemoryStore(), MemoryPool(), [T0]
    shell = CartShardImpl("agora:cart:0", make_env(store, pool, now))
    await shell.add_item("user:u1", "A", "Apple", 100, 4)
    guest = (
        CartViewLine("A", "Apple", 3, 100, 300),  # capped at max_quantity (5): 1 more
        CartViewLine("B", "Book", 1, 250, 250),
        CartViewLine("C", "Cup", 1, 50, 50),
        CartViewLine("D", "Dish", 1, 70, 70),  # a fourth line does not fit (max_lines 3)
    )
    merged = await shell.absorb("user:u1", guest, "WELCOME")
    assert [(x.sku, x.quantity) for x in merged.lines] == [("A", 5), ("B", 1), ("C", 1)]
    assert merged.coupon == "WELCOME"
    assert store.rows["user:u1"][1] == merged.version  # durable before the answer
    again = await shell.absorb("user:u1", (), None)  # nothing to take: no change
    assert again.version == merged.version
    await shell.drain()

    restarted = CartShardImpl("agora:cart:0", make_env(store, pool, now))
    reloaded = await restarted.view("user:u1")
    assert reloaded == merged
    assert event_types(pool).count("cart.absorbed") == 1


# --- sessions -----------------------------------------------------------------------------


async def test_session_shell_rotates_detects_reuse_and_revokes_durably() -> None:
    store, pool, now = MemoryStore(), MemoryPool(), [T0]
    shell = SessionShardImpl("agora:session:0", make_env(store, pool, now))
    await shell.open("u1", "s1", "h1", "Firefox", 3_600_000)
    assert store.rows["u1"][1] == 1  # answered after the commit
    assert await shell.is_active("u1", "s1")
    now[0] += 1_000
    assert await shell.rotate("u1", "s1", "h1", "h2") is None
    unknown = await shell.rotate("u1", "s1", "nope", "h3")
    assert isinstance(unknown, Rejected) and unknown.code == "invalid"
    reused = await shell.rotate("u1", "s1", "h1", "h3")  # the old token again: family revoked
    assert isinstance(reused, Rejected) and reused.code == "reused"
    assert not await shell.is_active("u1", "s1")
    assert event_types(pool) == ["auth.refresh_reused"]
    assert store.rows["u1"][0]["sessions"][0]["revoked_reason"] == "refresh-token-reused"
    ended = await shell.rotate("u1", "s1", "h2", "h4")
    assert isinstance(ended, Rejected) and ended.code == "revoked"
    await shell.drain()


async def test_session_shell_lists_revokes_one_or_all_and_erases() -> None:
    store, pool, now = MemoryStore(), MemoryPool(), [T0]
    shell = SessionShardImpl("agora:session:0", make_env(store, pool, now))
    for sid in ("s1", "s2", "s3"):
        await shell.open("u1", sid, f"h-{sid}", "phone", 3_600_000)
    listed = await shell.list("u1")
    assert [s["id"] for s in listed] == ["s1", "s2", "s3"]
    assert all("refresh_hash" not in s and "h-s1" not in str(s) for s in listed)
    assert await shell.revoke("u1", "s2", "logout") is True
    assert await shell.revoke("u1", "s2", "logout") is False  # no such active session
    assert sorted(await shell.revoke_all("u1", "password-changed")) == ["s1", "s3"]
    assert await shell.revoke_all("u1", "again") == []
    assert await shell.list("u1") == []
    assert event_types(pool) == ["auth.session_revoked"] * 3
    await shell.erase("u1")
    assert store.rows["u1"][0] == {"sessions": []}
    await shell.drain()

    restarted = SessionShardImpl("agora:session:0", make_env(store, pool, now))
    assert await restarted.list("u1") == [] and not await restarted.is_active("u1", "s1")


# --- inventory ----------------------------------------------------------------------------


def stocked(**on_hand: int) -> MemoryStore:
    store = MemoryStore()
    for sku, units in on_hand.items():
        store.rows[sku] = (StockItem(sku, on_hand=units).to_doc(), 1)
    return store


async def test_inventory_shell_single_sku_commands_are_idempotent_and_durable() -> None:
    store, pool, now = stocked(A=5), MemoryPool(), [T0]
    shell = InventoryShardImpl("agora:inventory:0", make_env(store, pool, now))
    unknown = await shell.get("NOPE")
    assert isinstance(unknown, Rejected) and unknown.code == "unknown-sku"
    assert await shell.get("A") == StockView("A", 5, 0, 5)
    assert await shell.reserve("A", "r1", 2, order_id="o1") == StockView("A", 5, 2, 3)
    assert await shell.reserve("A", "r1", 2) == StockView("A", 5, 2, 3)  # a repeat
    short = await shell.reserve("A", "r2", 9)
    assert isinstance(short, Rejected) and short.code == "insufficient"
    assert await shell.commit("A", "r1") == StockView("A", 3, 0, 3)
    assert await shell.commit("A", "r1") == StockView("A", 3, 0, 3)  # sold once
    assert store.rows["A"][0]["on_hand"] == 3  # durable before the answer
    assert await shell.return_units("A", "r1", 2) == StockView("A", 5, 0, 5)
    assert await shell.return_units("A", "r1", 2) == StockView("A", 5, 0, 5)  # once per rid
    await shell.reserve("A", "r3", 1)
    assert await shell.release("A", "r3") == StockView("A", 5, 0, 5)
    gone = await shell.release("A", "r9")
    assert isinstance(gone, Rejected) and gone.code == "unknown-reservation"
    await shell.reserve("A", "r4", 2)
    below = await shell.set_on_hand("A", 1)
    assert isinstance(below, Rejected) and below.code == "below-reserved"
    assert await shell.set_on_hand("A", 8) == StockView("A", 8, 2, 6)
    assert await shell.adjust("A", -6, "damaged") == StockView("A", 2, 2, 0)
    audit = await shell.audit("A")
    assert audit == Audit(on_hand=2, committed_units=0, reserved=2, live={"r4": 2})
    assert store.rows["A"][0]["on_hand"] == 2
    types = event_types(pool)
    assert types.count("inventory.changed") == 4  # sale, return, set, adjust
    assert types.count("inventory.low_stock") == 1  # only the adjust (8 -> 2) reaches 2
    await shell.drain()


async def test_inventory_shell_holds_all_lines_or_none_and_commits_releases_returns() -> None:
    store, pool, now = stocked(A=5, B=1), MemoryPool(), [T0]
    shell = InventoryShardImpl("agora:inventory:0", make_env(store, pool, now))
    lines = (LineHold("A", "o1:A", 2), LineHold("B", "o1:B", 1))
    assert await shell.reserve_many("o1", lines) == Held(("o1:A", "o1:B"))
    assert await shell.reserve_many("o1", lines) == Held(("o1:A", "o1:B"))  # a repeat
    short = await shell.reserve_many("o2", (LineHold("A", "o2:A", 1), LineHold("B", "o2:B", 1)))
    assert isinstance(short, Short) and [(s.sku, s.available) for s in short.lines] == [("B", 0)]
    assert (await shell.get("A")).reserved == 2  # type: ignore[union-attr]  # o2 held nothing
    refused = await shell.commit_many((LineHold("A", "o1:A"), LineHold("A", "o9:A")))
    assert isinstance(refused, Rejected) and refused.code == "unknown-reservation"
    assert await shell.commit_many(lines) == Done(2)
    assert await shell.commit_many(lines) == Done(2)  # committed already: idempotent
    assert store.rows["A"][0]["on_hand"] == 3 and store.rows["B"][0]["on_hand"] == 0
    assert await shell.return_many(lines) == Done(2)
    assert store.rows["A"][0]["on_hand"] == 5 and store.rows["B"][0]["on_hand"] == 1
    bad = await shell.return_many((LineHold("A", "o1:X", 0),))
    assert isinstance(bad, Rejected) and bad.code == "invalid"
    await shell.reserve_many("o3", (LineHold("A", "o3:A", 1),))
    assert await shell.release_many((LineHold("A", "o3:A"), LineHold("B", "nope"))) == Done(2)
    assert await shell.audit("A") == Audit(on_hand=5, committed_units=0, reserved=0, live={})
    await shell.drain()


async def test_inventory_sweeper_releases_expired_holds_and_persists_them() -> None:
    store, pool, now = stocked(A=5), MemoryPool(), [T0]
    shell = InventoryShardImpl("agora:inventory:0", make_env(store, pool, now))
    await shell.reserve("A", "r1", 3, ttl_s=1)
    assert store.rows["A"][0]["reservations"]
    now[0] += 1_001  # expired: reads ignore it at once, the sweeper drops it
    assert (await shell.get("A")) == StockView("A", 5, 0, 5)
    for _ in range(200):  # the fake clock moves on, so the sweep's flush comes due
        if not store.rows["A"][0]["reservations"]:
            break
        now[0] += 10
        await asyncio.sleep(0.01)
    assert store.rows["A"][0]["reservations"] == {}
    assert store.rows["A"][0]["finished"] == {"r1": "released"}
    late = await shell.commit("A", "r1")
    assert isinstance(late, Rejected) and late.code == "unknown-reservation"
    await shell.drain()
    assert shell._sweeper is not None
    shell._sweeper.cancel()
