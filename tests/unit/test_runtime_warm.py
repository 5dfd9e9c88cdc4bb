"""A replica's catalog warm-up survives the request that started it being cancelled,
and the events its readers see meanwhile reach the catalog being warmed."""

from __future__ import annotations

import asyncio

import pytest

from cluster.settings import Settings
from serve import runtime
from serve.runtime import Runtime


class _Warmup:
    """Stands in for the start-up load (PostgreSQL, index build): slow, counted."""

    def __init__(self, rt: Runtime, seconds: float) -> None:
        self.rt, self.seconds = rt, seconds
        self.started = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.started += 1
        await asyncio.sleep(self.seconds)
        self.finished += 1
        self.rt.catalog = object()  # type: ignore[assignment]


def _runtime(seconds: float) -> tuple[Runtime, _Warmup]:
    rt = Runtime(Settings())
    rt.pool = object()  # connected already: only the catalog is left to warm
    warm = _Warmup(rt, seconds)
    rt._warm_catalog = warm  # type: ignore[method-assign]
    return rt, warm


async def test_a_cancelled_request_does_not_cancel_or_restart_the_warm_up():
    rt, warm = _runtime(0.3)
    for _ in range(3):  # health probes that hang up before the catalog is loaded
        probe = asyncio.create_task(rt.ready())
        await asyncio.sleep(0.05)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    assert await asyncio.wait_for(rt.ready(), 2.0) is rt
    assert (warm.started, warm.finished) == (1, 1)


async def test_concurrent_requests_share_one_warm_up_and_a_failed_one_is_retried():
    rt, warm = _runtime(0.1)
    await asyncio.gather(*(rt.ready() for _ in range(5)))
    assert warm.started == 1

    failing, calls = Runtime(Settings()), []
    failing.pool = object()

    async def broken() -> None:
        calls.append(1)
        raise OSError("database away")

    failing._warm_catalog = broken  # type: ignore[method-assign]
    for _ in range(2):
        with pytest.raises(OSError):
            await failing.ready()
    assert len(calls) == 2  # the next request tries again


class _Catalog:
    """Stands in for ``CatalogState``: its warm-up waits for ``loaded``."""

    def __init__(self, _db: object) -> None:
        self.loaded = asyncio.Event()
        self.events: list[str] = []
        self.gaps = 0

    async def warm(self) -> None:
        await self.loaded.wait()

    def on_event(self, event: str) -> None:
        self.events.append(event)

    def on_gap(self) -> None:
        self.gaps += 1


async def test_events_seen_during_the_warm_up_reach_the_catalog_being_warmed(monkeypatch):
    monkeypatch.setattr(runtime, "CatalogState", _Catalog)
    rt = Runtime(Settings())
    rt.pool = object()
    rt.follower = object()  # type: ignore[assignment]  # readers started already
    ready = asyncio.create_task(rt.ready())
    await asyncio.sleep(0.05)
    rt._on_event("order.confirmed")
    rt._on_gap()
    warming = rt._filling
    assert isinstance(warming, _Catalog) and rt.catalog is None
    warming.loaded.set()
    assert await asyncio.wait_for(ready, 2.0) is rt and rt.catalog is warming
    rt._on_event("product.updated")
    assert warming.events == ["order.confirmed", "product.updated"] and warming.gaps == 1
