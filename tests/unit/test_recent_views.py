"""Product page views feed a shopper's recent views without waiting (serve.recent, serve.views)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from cluster.settings import Settings
from serve import recent, views
from serve.auth.tokens import Claims


class _Pipeline:
    def __init__(self, redis: _Redis) -> None:
        self._redis = redis
        self._ops: list[tuple[str, tuple[Any, ...]]] = []

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def lpush(self, key: str, *values: str) -> _Pipeline:
        self._ops.append(("lpush", (key, *values)))
        return self

    def ltrim(self, key: str, start: int, stop: int) -> _Pipeline:
        self._ops.append(("ltrim", (key, start, stop)))
        return self

    def expire(self, key: str, seconds: int) -> _Pipeline:
        self._ops.append(("expire", (key, seconds)))
        return self

    async def execute(self) -> None:
        self._redis.round_trips += 1
        if self._redis.down:
            raise ConnectionError("redis down")
        for op, args in self._ops:
            getattr(self._redis, "do_" + op)(*args)


class _Redis:
    """The few list commands serve.recent uses, in memory (like Redis's semantics)."""

    def __init__(self) -> None:
        self.lists: dict[str, list[bytes]] = {}
        self.ttl: dict[str, int] = {}
        self.round_trips = 0
        self.down = False

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def do_lpush(self, key: str, *values: str) -> None:
        for value in values:
            self.lists.setdefault(key, []).insert(0, value.encode())

    def do_ltrim(self, key: str, start: int, stop: int) -> None:
        self.lists[key] = self.lists.get(key, [])[start : stop + 1]

    def do_expire(self, key: str, seconds: int) -> None:
        self.ttl[key] = seconds

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        return self.lists.get(key, [])[start : stop + 1]


class _Verifier:
    def verify(self, token: str, now: int) -> Claims | None:
        if token != "good":
            return None
        return Claims("u1", None, (), "j", "i", "a", now, now, now + 60, {})


class _Request:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def _runtime(redis: _Redis, **settings: Any) -> Any:
    return SimpleNamespace(
        settings=Settings(views_enabled=False, **settings),
        urls=None,
        verifier=_Verifier(),
        tokens=None,
        redis=redis,
    )


@pytest.fixture(autouse=True)
def _fresh_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "_recent", None)


async def test_a_signed_in_page_view_reaches_the_recent_list_soon_without_io_on_the_request():
    redis = _Redis()
    rt = _runtime(redis, recommend_recent_s=600)
    for sku in ("A", "B", "C"):
        views.record_view(rt, _Request({"authorization": "Bearer good"}), sku)  # type: ignore[arg-type]
    assert redis.round_trips == 0  # the page returned before anything was written
    assert await recent.recent_views(redis, "u1", 600) == []
    deadline = time.monotonic() + 2
    while redis.round_trips == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert redis.round_trips == 1  # three views, one pipeline
    assert await recent.recent_views(redis, "u1", 600) == ["C", "B", "A"]  # newest first
    assert redis.ttl[recent.recent_key("u1")] == 600


async def test_anonymous_or_forged_callers_and_disabled_models_note_nothing():
    redis = _Redis()
    rt = _runtime(redis)
    for headers in ({}, {"authorization": "Bearer forged"}, {"x-cart-token": "x.y"}):
        views.record_view(rt, _Request(headers), "A")  # type: ignore[arg-type]
    buffer = views.recent_buffer(rt)
    assert buffer is not None and buffer.pending() == 0
    off = _runtime(redis, models_enabled=False)
    views._recent = None
    views.record_view(off, _Request({"authorization": "Bearer good"}), "A")  # type: ignore[arg-type]
    assert views.recent_buffer(off) is None


async def test_the_list_keeps_the_newest_views_per_shopper_and_skips_expired_entries():
    redis = _Redis()
    buffer = recent.RecentViewBuffer(redis, ttl_s=60, capacity=100, flush_s=0)
    for i in range(recent.MAX_RECENT + 5):
        buffer.note("u1", f"S{i}")
    buffer.note("u2", "X")
    assert await buffer.flush() == recent.MAX_RECENT + 6
    mine = await recent.recent_views(redis, "u1", 60)
    assert mine == [f"S{i}" for i in range(recent.MAX_RECENT + 4, 4, -1)]
    assert await recent.recent_views(redis, "u2", 60) == ["X"]
    key = recent.recent_key("u2")
    redis.lists[key].append(f"{int(time.time()) - 120}:OLD".encode())
    redis.lists[key].append(b"garbage")
    assert await recent.recent_views(redis, "u2", 60) == ["X"]


async def test_a_full_queue_or_a_redis_outage_drops_views_and_never_raises():
    redis = _Redis()
    buffer = recent.RecentViewBuffer(redis, ttl_s=60, capacity=2, flush_s=0)
    assert buffer.note("u1", "A") and buffer.note("u1", "B")
    assert not buffer.note("u1", "C")  # full: dropped, counted
    redis.down = True
    assert await buffer.flush() == 2  # lost, not retried, not raised
    redis.down = False
    assert buffer.pending() == 0 and await recent.recent_views(redis, "u1", 60) == []
    assert buffer.note("u1", "D")
    await asyncio.sleep(0.05)  # the drain task runs on its own
    assert await recent.recent_views(redis, "u1", 60) == ["D"]
