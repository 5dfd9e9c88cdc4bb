"""Health and metrics routes: liveness, readiness (each dependency named), Prometheus text.

No ``from __future__ import annotations``: FastAPI must see real annotations.
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from ledger import store as ledger_store
from ledger.chain import node_reachable
from serve import ops_metrics, problems
from serve.auth.principal import PUBLIC
from serve.models.deployments import check_models
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

LEDGER_GAUGES = {
    name: Gauge(f"agora_ledger_{name}", help_text)
    for name, help_text in {
        "backlog_leaves": "leaves recorded and not yet anchored",
        "oldest_unanchored_age_s": "anchoring lag: age of the oldest unanchored leaf",
        "last_batch_lag_s": "first leaf recorded to anchored, last anchored batch",
        "last_batch_gas": "gas used by the last anchoring transaction",
        "last_batch_leaves": "leaves in the last anchored batch",
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
    """Ready to serve: database, cache, broker, cart shards and the model deployments reachable."""
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
        *((("models", check_models),) if rt.settings.models_enabled else ()),
    ):
        try:
            await check()
        except Exception:
            failing.append(name)
    if failing:
        return problems.problem_response(
            503, "not-ready", "Not ready: " + ", ".join(failing) + ".", failing=failing
        )
    # Degraded, never down: an unreachable chain only delays anchoring (issue 8).
    degraded = []
    if rt.urls.chain and not await node_reachable(rt.urls.chain, timeout_s=1.0):
        degraded.append("chain")
    if degraded:
        return {"status": "ready", "degraded": degraded}
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
    try:
        rt = await runtime().ready()
        async with rt.pool.acquire() as conn:
            ledger = await asyncio.wait_for(ledger_store.stats(conn), 2.0)
        for name, gauge in LEDGER_GAUGES.items():
            value = ledger.get(name)
            if value is not None:
                gauge.set(value)
    except Exception:  # noqa: S110 - the ledger's tables may not be there yet
        pass
    try:
        await ops_metrics.refresh(await runtime().ready())
    except Exception:  # noqa: S110 - config missing: the rest still renders
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
