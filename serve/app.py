"""The HTTP API: one Ray Serve deployment (``Api``) with a FastAPI ingress.

The routes live in one router module per concern (``serve.routers.*``,
``serve.routers.auth``); this module assembles them, installs
problem+json errors and the middleware, and declares the deployment. No
``from __future__ import annotations``: FastAPI must see real annotations.
"""

from typing import Any

from fastapi import FastAPI
from ray import serve

from cluster.settings import get_settings
from serve import problems
from serve.middleware import Guard
from serve.models.deployments import model_deployments
from serve.routers.admin import router as admin_router
from serve.routers.admin_products import router as admin_products_router
from serve.routers.analytics import router as analytics_router
from serve.routers.audit import router as audit_router
from serve.routers.auth import router as auth_router
from serve.routers.cart import router as cart_router
from serve.routers.catalog import router as catalog_router
from serve.routers.checkout import router as checkout_router
from serve.routers.health import router as health_router
from serve.routers.media import router as media_router
from serve.routers.orders import router as orders_router
from serve.routers.password import router as password_router
from serve.routers.recommend import router as recommend_router
from serve.routers.reviews import router as reviews_router
from serve.routers.webhooks_admin import router as webhooks_admin_router
from serve.runtime import runtime
from streams import tracing

api = FastAPI(
    title="Agora",
    version="1.0.0",
    description="Actor-based e-commerce backend. Errors are RFC 9457 problem+json.",
    # FastAPI's own OpenTelemetry would add a second server span (with the query string)
    # once streams.tracing installs a provider: serve.middleware owns the request's span.
    telemetry={"tracing": False, "metrics": False, "logs": False},
)
problems.install(api)
api.add_middleware(Guard)
for router in (
    health_router,
    catalog_router,
    cart_router,
    checkout_router,
    orders_router,
    auth_router,
    password_router,
    admin_router,
    audit_router,
    webhooks_admin_router,
    analytics_router,
    recommend_router,
    reviews_router,
    admin_products_router,
    media_router,
):
    api.include_router(router)


@serve.deployment(
    name="Api",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    health_check_period_s=5,
)
@serve.ingress(api)
class Api:
    """The HTTP ingress deployment; its routes are the routers above."""

    def __init__(self, *models: Any) -> None:
        # ``models``: the FraudScorer and Recommender handles, bound so that they
        # deploy with the API; callers reach them by name (serve.models.deployments).
        # Before the runtime opens its pool: its connections record queries when tracing is on.
        tracing.setup(tracing.TracingConfig.from_env(), "agora-api")
        self.rt = runtime()
        self.models = models


def build_app(num_replicas: int | None = None) -> Any:
    """The Serve application: ``Api``, and the ``FraudScorer`` and ``Recommender`` models."""
    settings = get_settings()
    deployment: Any = Api
    models = model_deployments(settings) if settings.models_enabled else ()
    return deployment.options(num_replicas=num_replicas or settings.api_replicas).bind(*models)


app = build_app
