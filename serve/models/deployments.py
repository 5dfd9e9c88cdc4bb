"""The model deployments: ``FraudScorer`` and ``Recommender`` (Ray Serve, onnxruntime).

Each replica holds one onnxruntime session (``model_threads`` intra-op threads:
the box has 2 cores and the API shares them), batches concurrent calls with
``@serve.batch`` (up to ``model_batch_max`` calls, waiting at most
``model_batch_wait_ms``), and autoscales on ongoing requests between
``model_min_replicas`` and ``model_max_replicas``. ``reconfigure`` (Serve's
``user_config``: ``{"models_dir": ...}``) loads a new model version next to the
running one and swaps it in: calls in flight finish on the old session, no
replica restarts. Both are part of the ``agora`` application (``serve.app``);
the checkout saga reaches ``FraudScorer`` by name
(``cluster.adapters.order_ports.ServeFraudModel``), the recommendations router
reaches ``Recommender`` by name too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve

from cluster.settings import Settings, get_settings
from serve.models.scoring import ARTIFACTS, FraudModel, RecommenderModel, compose

APP_NAME = "agora"
FRAUD = "FraudScorer"
RECOMMENDER = "Recommender"


def _directory(config: dict[str, Any] | None, settings: Settings) -> Path:
    chosen = (config or {}).get("models_dir") or settings.models_dir
    return Path(chosen) if chosen else ARTIFACTS


def autoscaling(settings: Settings) -> dict[str, Any]:
    return {
        "min_replicas": settings.model_min_replicas,
        "max_replicas": max(settings.model_min_replicas, settings.model_max_replicas),
        "target_ongoing_requests": settings.model_target_ongoing,
        "upscale_delay_s": 3.0,
        "downscale_delay_s": 30.0,
    }


class _Swappable:
    """Loads a model on start and on ``reconfigure``; the swap is one assignment."""

    loader: Any

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model: Any = self.loader(_directory(None, self.settings), self.settings.model_threads)
        self._configure_batching()

    def _configure_batching(self) -> None:
        batch: Any = self._batch  # type: ignore[attr-defined]
        batch.set_max_batch_size(self.settings.model_batch_max)
        batch.set_batch_wait_timeout_s(self.settings.model_batch_wait_ms / 1000)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        directory = _directory(config, self.settings)
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(
            None, self.loader, directory, self.settings.model_threads
        )
        self.model = fresh  # calls in flight keep the session they started with

    async def version(self) -> str:
        return str(self.model.version)


@serve.deployment(name=FRAUD, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class FraudScorer(_Swappable):
    """P(fraud) and a decision (pass/review/block) for an order's raw facts."""

    loader = FraudModel

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _batch(self, facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.model
        return [
            {"score": v.score, "decision": v.decision, "version": model.version}
            for v in model.score(facts)
        ]

    async def score(self, facts: dict[str, Any]) -> dict[str, Any]:
        """One order (batched with concurrent calls)."""
        result: dict[str, Any] = await self._batch(facts)
        return result

    async def score_many(self, facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A batch the caller already formed (one session run)."""
        model = self.model
        return [
            {"score": v.score, "decision": v.decision, "version": model.version}
            for v in model.score(facts)
        ]


@serve.deployment(name=RECOMMENDER, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Recommender(_Swappable):
    """Top-k SKUs for a shopper's history, recent items and cart (excluded)."""

    loader = RecommenderModel

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _batch(self, requests: list[dict[str, Any]]) -> list[list[str]]:
        model = self.model
        k = max(int(r.get("k", 10)) for r in requests)
        history = [compose(r.get("history") or {}, r.get("recent") or []) for r in requests]
        exclude = [list(r.get("exclude") or []) for r in requests]
        ranked = model.recommend(history, exclude, k)
        return [row[: int(r.get("k", 10))] for row, r in zip(ranked, requests, strict=True)]

    async def recommend(self, request: dict[str, Any]) -> list[str]:
        """``{history: {sku: weight}, recent: [sku], exclude: [sku], k}`` -> SKUs, best first."""
        result: list[str] = await self._batch(request)
        return result

    async def known(self, sku: str) -> bool:
        return sku in self.model.index


def model_deployments(settings: Settings) -> tuple[Any, Any]:
    """The two bound deployments, with autoscaling from the settings."""
    scale = autoscaling(settings)
    fraud: Any = FraudScorer
    rec: Any = Recommender
    return (
        fraud.options(autoscaling_config=scale).bind(),
        rec.options(autoscaling_config=scale).bind(),
    )


_handles: dict[str, Any] = {}


def handle(name: str) -> Any:
    """A handle to one of the model deployments of the ``agora`` application (cached)."""
    if name not in _handles:
        _handles[name] = serve.get_deployment_handle(name, app_name=APP_NAME)
    return _handles[name]


async def check_models(timeout_s: float = 2.0) -> None:
    """Readiness: both model deployments answer (raises otherwise)."""
    for name in (FRAUD, RECOMMENDER):
        await asyncio.wait_for(handle(name).version.remote(), timeout_s)


def running_replicas(name: str) -> int:
    """Running replicas of one deployment of the ``agora`` application (for benchmarks)."""
    status = serve.status().applications[APP_NAME].deployments[name]
    states: dict[Any, int] = dict(status.replica_states)
    return int(sum(n for state, n in states.items() if str(state).endswith("RUNNING")))
