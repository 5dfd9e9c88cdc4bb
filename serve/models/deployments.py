"""The model deployments: ``FraudScorer`` and ``Recommender`` (Ray Serve, onnxruntime).

Each replica holds one onnxruntime session (``model_threads`` intra-op threads:
the box has 2 cores and the API shares them), batches concurrent calls with
``@serve.batch`` (up to ``model_batch_max`` calls, waiting at most
``model_batch_wait_ms``), and autoscales on ongoing requests between
``model_min_replicas`` and ``model_max_replicas``. ``reconfigure`` (Serve's
``user_config``: ``{"models_dir": ...}``) loads a new model version next to the
running one and swaps it in: calls in flight finish on the old session, no
replica restarts. ``agora models swap --dir DIR`` is how an operator reaches every
replica: it writes the directory to ``var/models/current.json`` (the *pointer*),
and each replica, on a call at most every ``WATCH_S``, sees the pointer changed and
reconfigures itself in the background; replicas started later load the pointer's
directory. A version that fails to load is logged and the running one stays.
Both are part of the ``agora`` application (``serve.app``);
the checkout saga reaches ``FraudScorer`` by name
(``cluster.adapters.order_ports.ServeFraudModel``), the recommendations router
reaches ``Recommender`` by name too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import serve

from cluster.settings import Settings, get_settings
from serve.models.scoring import ARTIFACTS, FraudModel, RecommenderModel, compose

APP_NAME = "agora"
FRAUD = "FraudScorer"
RECOMMENDER = "Recommender"
WATCH_S = 2.0  # how often (at most, on calls) a replica looks at the pointer
log = logging.getLogger(__name__)


def pointer_path(settings: Settings) -> Path:
    """Where ``agora models swap`` records the models directory every replica serves."""
    return settings.var_dir / "models" / "current.json"


def _pointed(settings: Settings, pointer: Path | None = None) -> str | None:
    try:
        chosen = json.loads((pointer or pointer_path(settings)).read_text())["models_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(chosen) if chosen else None


def _directory(config: dict[str, Any] | None, settings: Settings) -> Path:
    chosen = (config or {}).get("models_dir") or _pointed(settings) or settings.models_dir
    return Path(chosen) if chosen else ARTIFACTS


def write_pointer(settings: Settings, directory: Path | None) -> None:
    """Point every replica at ``directory`` (``None``: back to the default models)."""
    pointer = pointer_path(settings)
    if directory is None:
        pointer.unlink(missing_ok=True)
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staged = pointer.with_suffix(".tmp")
    staged.write_text(json.dumps({"models_dir": str(directory.resolve())}) + "\n")
    os.replace(staged, pointer)  # replicas never read half a file


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
        self.pointer = pointer_path(self.settings)
        self._seen = self._pointer_state()
        self._checked = time.monotonic()
        self._refreshing: asyncio.Task[None] | None = None
        self.model: Any = self.loader(_directory(None, self.settings), self.settings.model_threads)
        self._configure_batching()

    def _pointer_state(self) -> tuple[str | None, float]:
        try:
            mtime = self.pointer.stat().st_mtime
        except OSError:
            return None, 0.0
        return _pointed(self.settings, self.pointer), mtime

    def _watch(self) -> None:
        """On a call, at most every ``WATCH_S``: reconfigure in the background when the
        pointer changed (calls go on with the running model meanwhile)."""
        now = time.monotonic()
        if now - self._checked < WATCH_S or (self._refreshing and not self._refreshing.done()):
            return
        self._checked = now
        state = self._pointer_state()
        if state == self._seen:
            return
        self._seen = state
        chosen = state[0] or self.settings.models_dir or str(ARTIFACTS)
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh(chosen))

    async def _refresh(self, directory: str) -> None:
        try:
            await self.reconfigure({"models_dir": directory})
        except Exception:  # a broken version: keep serving the running one
            log.exception(
                "models in %s did not load; still serving %s", directory, self.model.version
            )
            return
        log.info("now serving models %s from %s", self.model.version, directory)

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
        self._watch()
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
        self._watch()
        result: dict[str, Any] = await self._batch(facts)
        return result

    async def score_many(self, facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A batch the caller already formed (one session run)."""
        self._watch()
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
        self._watch()
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
