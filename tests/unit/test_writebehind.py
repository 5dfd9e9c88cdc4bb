"""Write-behind batching on a fake clock, with an in-memory store standing in for PostgreSQL."""

import asyncio
import contextlib

import pytest

from actors.writebehind import DirtyTracker, Flusher, RowQuarantined
from streams.events import CART_ITEM_ADDED, make_event


def ev(key, ms=1):
    return make_event(CART_ITEM_ADDED, key, {"k": key}, ms)


def test_not_due_until_interval_or_batch_full():
    t = DirtyTracker(batch_size=3, interval_ms=50)
    t.mark("a", 1, [ev("a")], now_ms=1000)
    assert not t.due(1049)
    assert t.due(1050)
    t.mark("b", 1, [], 1010)
    t.mark("c", 1, [], 1020)
    assert t.due(1021)


def test_take_respects_batch_size_and_oldest_first():
    t = DirtyTracker(batch_size=2, interval_ms=50)
    t.mark("late", 1, [], 30)
    t.mark("early", 1, [], 10)
    t.mark("mid", 1, [], 20)
    batch = t.take()
    assert batch.keys == ["early", "mid"]
    assert len(t) == 1 and t.is_dirty("late")


def test_marking_twice_keeps_newest_version_and_all_events():
    t = DirtyTracker(10, 50)
    t.mark("a", 1, [ev("a")], 1)
    t.mark("a", 2, [ev("a")], 5)
    batch = t.take()
    assert batch.versions == {"a": 2}
    assert len(batch.events) == 2
    assert batch.oldest_ms == 1


def test_put_back_restores_keys_events_and_age():
    t = DirtyTracker(10, 50)
    t.mark("a", 1, [ev("a")], 1)
    batch = t.take()
    t.mark("a", 2, [ev("a", 2)], 7)
    t.put_back(batch)
    again = t.take()
    assert again.versions == {"a": 2}
    assert [e.payload for e in again.events] == [{"k": "a"}, {"k": "a"}]
    assert again.oldest_ms == 1


class MemoryDb:
    """In-memory stand-in for the PostgreSQL port: versioned upserts plus an outbox."""

    def __init__(self):
        self.rows = {}
        self.outbox = []
        self.transactions = 0
        self.fail_next = 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    @contextlib.asynccontextmanager
    async def transaction(self):
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database down")
        staged_rows, staged_outbox = dict(self.rows), list(self.outbox)
        yield
        self.transactions += 1
        del staged_rows, staged_outbox

    async def upsert(self, conn, rows):
        for key, doc, version in rows:
            old = self.rows.get(key)
            if old is None or old[1] < version:
                self.rows[key] = (doc, version)

    async def executemany(self, _sql, args):
        self.outbox.extend(a[0] for a in args)


class FakeClock:
    def __init__(self):
        self.now = 1_000

    def __call__(self):
        return self.now


def make_flusher(db, state, clock, batch=100):
    return Flusher(
        DirtyTracker(batch, 50),
        db,
        db.acquire,
        lambda k: (state[k], state[k]["v"]) if k in state else None,
        clock=clock,
    )


async def test_one_transaction_per_batch_with_its_events():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    for i in range(10):
        state[f"k{i}"] = {"v": 1}
        f.mark(f"k{i}", 1, [ev(f"k{i}")])
    clock.now += 50
    assert await f.flush_once() == 10
    assert db.transactions == 1
    assert len(db.rows) == 10 and len(db.outbox) == 10
    assert f.stats()["last_flush_lag_ms"] == 50
    assert f.stats()["dirty_keys"] == 0


async def test_older_write_never_overwrites_newer():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    db.rows["a"] = ({"v": 5}, 5)
    state["a"] = {"v": 3}
    f.mark("a", 3, [])
    await f.flush_once()
    assert db.rows["a"][1] == 5


async def test_failed_batch_is_retried_and_loses_nothing():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    state["a"] = {"v": 1}
    f.mark("a", 1, [ev("a")])
    db.fail_next = 1
    with pytest.raises(ConnectionError):
        await f.flush_once()
    assert f.tracker.is_dirty("a") and db.outbox == []
    await f.flush_once()
    assert db.rows["a"][1] == 1 and len(db.outbox) == 1


async def test_durable_waiters_complete_after_commit_in_one_group():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    waits = []
    for i in range(20):
        state[f"k{i}"] = {"v": 1}
        f.mark(f"k{i}", 1, [])
        waits.append(f.durable(f"k{i}", 1))
    await asyncio.sleep(0)
    assert not any(w.done() for w in waits)
    await f.flush_once()
    assert all(w.done() for w in waits)
    assert db.transactions == 1


async def test_durable_on_clean_key_completes_at_once():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    assert f.durable("never-dirty", 0).done()


async def test_background_loop_flushes_durable_waiters_without_waiting_the_interval():
    db, state = MemoryDb(), {}
    f = Flusher(DirtyTracker(100, 60_000), db, db.acquire, lambda k: (state[k], 1))
    f.start()
    state["a"] = {"v": 1}
    f.mark("a", 1, [])
    await asyncio.wait_for(f.durable("a", 1), timeout=2)
    assert db.rows["a"][1] == 1


async def test_drain_flushes_everything():
    db, clock, state = MemoryDb(), FakeClock(), {}
    f = make_flusher(db, state, clock, batch=3)
    for i in range(10):
        state[f"k{i}"] = {"v": 1}
        f.mark(f"k{i}", 1, [])
    assert await f.drain() == 10
    assert db.transactions == 4


class RefusedData(ValueError):
    """What asyncpg raises for data PostgreSQL refuses (SQLSTATE class 22)."""

    sqlstate = "22P05"


class PickyDb(MemoryDb):
    """Transactions that roll back, and rows PostgreSQL would refuse (a NUL byte in text)."""

    @contextlib.asynccontextmanager
    async def transaction(self):
        staged_rows, staged_outbox = dict(self.rows), list(self.outbox)
        try:
            yield
        except BaseException:
            self.rows, self.outbox = staged_rows, staged_outbox
            raise
        self.transactions += 1

    async def upsert(self, conn, rows):
        for key, doc, _version in rows:
            if "\x00" in doc.get("address", ""):
                raise RefusedData("unsupported Unicode escape sequence")
        await super().upsert(conn, rows)

    async def executemany(self, _sql, args):
        self.outbox.extend(a[2] for a in args)  # the aggregate key of each event


async def test_one_bad_row_never_poisons_its_batch():
    db, clock, state = PickyDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    for i in range(5):
        state[f"k{i}"] = {"v": 1, "address": "Rua A, 1"}
        f.mark(f"k{i}", 1, [ev(f"k{i}")])
    state["k2"] = {"v": 1, "address": "Rua \x00"}
    bad_waiter = f.durable("k2", 1)
    good_waiter = f.durable("k3", 1)
    assert await f.flush_once() == 4
    assert sorted(db.rows) == ["k0", "k1", "k3", "k4"]
    assert sorted(db.outbox) == ["k0", "k1", "k3", "k4"]
    assert good_waiter.done() and good_waiter.exception() is None
    assert isinstance(bad_waiter.exception(), RowQuarantined)
    # Parked: still dirty (never evicted), not retried, counted; the rest keeps flushing.
    assert f.tracker.is_dirty("k2") and f.tracker.is_parked("k2") and len(f.tracker) == 0
    assert f.stats()["quarantined_rows"] == 1 and f.stats()["quarantined_total"] == 1
    assert await f.drain() == 0
    with pytest.raises(RowQuarantined):
        await f.durable("k2", 1)
    state["k9"] = {"v": 1, "address": "Rua B"}
    f.mark("k9", 1, [ev("k9")])
    assert await f.flush_once() == 1 and "k9" in db.rows
    # A later change that repairs the row brings it (and its parked events) back.
    state["k2"] = {"v": 2, "address": "Rua C"}
    f.mark("k2", 2, [ev("k2", 2)])
    assert await f.flush_once() == 1
    assert db.rows["k2"] == ({"v": 2, "address": "Rua C"}, 2)
    assert db.outbox.count("k2") == 2
    assert f.stats()["quarantined_rows"] == 0


async def test_a_lone_bad_row_is_parked_not_retried_forever():
    db, clock, state = PickyDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    state["bad"] = {"v": 1, "address": "\x00"}
    f.mark("bad", 1, [])
    assert await f.flush_once() == 0
    assert f.tracker.is_parked("bad") and not f.tracker.due(clock.now + 10_000)


async def test_database_down_is_not_mistaken_for_bad_data():
    db, clock, state = PickyDb(), FakeClock(), {}
    f = make_flusher(db, state, clock)
    for key in ("a", "b"):
        state[key] = {"v": 1}
        f.mark(key, 1, [])

    @contextlib.asynccontextmanager
    async def down():
        raise ConnectionRefusedError("database down")
        yield

    f._acquire = down
    with pytest.raises(ConnectionRefusedError):
        await f.flush_once()
    assert len(f.tracker) == 2 and f.stats()["quarantined_total"] == 0
