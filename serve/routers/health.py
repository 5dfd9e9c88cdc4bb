"""Health and metrics routes: liveness, readiness (each dependency named), Prometheus text.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from serve import problems
from serve.auth.principal import PUBLIC
from serve.runtime import runtime

router = APIRouter(tags=["health"])

SHARD_GAUGES = {
    name: Gauge(f"agora_shard_{name}", help_text, ["shard"])
    for name, help_text in {
        "resident": "keys held in memory",
        "dirty_keys": "keys changed and not yet flushed",
        "pending_lag_ms": "age of the oldest unflushed change",
        "last_flush_lag_ms": "change-to-commit lag of the last batch",
        "max_flush_lag_ms": "worst change-to-commit lag seen",
        "last_batch_size": "rows in the last flushed batch",
        "committed_batches": "batches committed",
        "committed_rows": "rows committed",
        "failed_batches": "batches that failed and were retried",
    }.items()
}


@router.get("/healthz", openapi_extra=PUBLIC)
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    openapi_extra=PUBLIC,
    responses={503: {"description": "a dependency is down"}},
)
async def readyz() -> Any:
    """Ready to serve: database, cache, broker and cart shards reachable."""
    try:
        rt = await runtime().ready()
    except Exception:
        return problems.problem_response(
            503, "not-ready", "Service configuration is not available.", failing=["config"]
        )
    failing = []
    for name, check in (
        ("database", rt.check_database),
        ("redis", rt.check_redis),
        ("broker", rt.check_broker),
        ("cart_shards", rt.check_shards),
    ):
        try:
            await check()
        except Exception:
            failing.append(name)
    if failing:
        return problems.problem_response(
            503, "not-ready", "Not ready: " + ", ".join(failing) + ".", failing=failing
        )
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse, openapi_extra=PUBLIC)
async def metrics() -> Response:
    """Prometheus text: request counts and latency of this replica, shard flush metrics."""
    try:
        rt = await runtime().ready()
        for stats in await asyncio.wait_for(rt.shards.stats_of("cart"), 2.0):
            for name, gauge in SHARD_GAUGES.items():
                gauge.labels(stats["name"]).set(stats.get(name, 0))
    except Exception:  # noqa: S110 - metrics must render even while a shard restarts
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
