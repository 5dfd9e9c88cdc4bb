"""Agora's one settings class: every knob is an ``AGORA_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration. Unset service URLs mean "start the embedded default"."""

    model_config = SettingsConfigDict(env_prefix="AGORA_", extra="ignore")

    # Where embedded services keep their data, pids and logs (git-ignored).
    var_dir: Path = ROOT / "var"

    database_url: str | None = None
    redis_url: str | None = None
    pulsar_url: str | None = None
    # A Stripe-compatible payments API; unset: the embedded localstripe. The
    # default key suits localstripe only (it accepts any ``sk_`` key);
    # production sets the real secret key through AGORA_STRIPE_API_KEY. It is
    # a SecretStr so no repr or log of the settings ever shows it.
    stripe_api_base: str | None = None
    stripe_api_key: SecretStr = SecretStr("sk_test_agora_local")
    # A Pix PSP; unset: the embedded sandbox (cluster.pix_sandbox). Charges
    # are paid to pix_key; the merchant name and city go into the BR Code. The
    # webhook secret signs the PSP's callbacks; unset: the one ``agora up``
    # keeps in var/run/pix_webhook_secret.
    pix_api_base: str | None = None
    pix_key: str = "pix@agora.example"
    pix_merchant_name: str = "Agora"
    pix_merchant_city: str = "Sao Paulo"
    pix_expiry_s: int = 900
    pix_webhook_secret: SecretStr | None = None

    # Ray
    ray_port: int = 6380
    ray_client_port: int = 6381
    ray_namespace: str = "agora"
    ray_num_cpus: int = 4

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    api_replicas: int = 1
    haproxy: bool = True
    # A request still unanswered after this long answers 503 problem+json (server-side deadline).
    request_deadline_s: float = 10.0

    # Shards and write-behind
    cart_shards: int = 4
    virtual_nodes: int = 64
    flush_interval_ms: int = 50
    flush_batch_size: int = 500
    shard_max_keys: int = 50_000

    # Carts
    cart_max_lines: int = 50
    cart_max_quantity: int = 99
    cart_token_secret: str | None = None

    # Inventory
    inventory_shards: int = 4
    reservation_ttl_s: int = 900
    low_stock_threshold: int = 5
    sweep_interval_ms: int = 1000

    # Orders
    order_shards: int = 4
    fraud_review_score: int = 50
    fraud_block_score: int = 80
    saga_step_deadline_s: float = 20.0  # a step before the charge gives up after this
    checkout_wait_s: float = 8.0  # then POST /v1/checkout answers 202 + Location

    # Identity
    session_shards: int = 4
    jwt_issuer: str = "http://127.0.0.1:8000"
    jwt_audience: str = "agora-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_days: int = 30
    jwt_leeway_s: int = 30
    mfa_token_ttl_s: int = 300
    signing_key_cache_s: float = 30.0
    # Rate limits (GCRA in Redis)
    login_failures_per_account: int = 5
    login_failures_period_s: int = 900
    auth_requests_per_ip: int = 120
    auth_requests_period_s: int = 60
    api_requests_per_ip: int = 6000
    api_requests_period_s: int = 60
    # Each API replica spends the per-IP API limit from leases of
    # min(limit/100, this) requests, each valid this long (1: exact, no lease).
    api_lease_max_units: int = 50
    api_lease_s: float = 1.0
    # The client IP comes only from this header, and only when the direct peer
    # is one of trusted_proxies (CIDRs). Unset: the direct peer address.
    trusted_proxy_header: str | None = None
    trusted_proxies: list[str] = ["127.0.0.1/32", "::1/128"]

    # Outbox relay
    outbox_poll_ms: int = 50
    outbox_batch_size: int = 500
    events_tenant: str = "agora"
    events_namespace: str = "events"

    # Demo data
    seed_products: int = Field(default=2400, ge=0)

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
