"""Agora's one settings class: every knob is an ``AGORA_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.warehouse_url import local_path, parse_s3_url

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
    # is one of trusted_proxies (CIDRs). Unset: the direct peer address. The
    # default ingress (Ray's HAProxy via cluster/haproxy_edge.py) sets it to the
    # TCP peer, replacing what a client sent.
    trusted_proxy_header: str | None = "X-Forwarded-For"
    trusted_proxies: list[str] = ["127.0.0.1/32", "::1/128"]

    # Outbox relay
    outbox_poll_ms: int = 50
    outbox_batch_size: int = 500
    events_tenant: str = "agora"
    events_namespace: str = "events"

    # Demo data
    seed_products: int = Field(default=2400, ge=0)

    # Events consumers (issue 11): notifications, password reset, audit, webhooks.
    # SMTP: smtp://[user:pass@]host:port (smtps:// for implicit TLS); unset: the
    # embedded aiosmtpd delivering into var/mail (a Maildir).
    smtp_url: str | None = None
    mail_from: str = "Agora <no-reply@agora.example>"
    mail_default_locale: str = "pt-BR"  # a user's preferences.locale wins (pt-BR or en)
    mail_retry_max_s: float = 300.0  # backoff cap between tries of one unsent mail
    public_base_url: str = "http://127.0.0.1:8000"  # links in mails (password reset)
    password_reset_ttl_s: int = 1800
    notifications_consumers: int = Field(default=1, ge=0)  # 0: no notifications actor
    # Webhooks: allow URLs on private/loopback addresses (SSRF guard off; local receivers).
    webhooks_allow_private: bool = False
    webhooks_max_backoff_s: float = 3600.0
    webhooks_give_up_after_s: float = 86_400.0  # then the delivery is dead-lettered

    # Operations (issue 12): HAProxy's stats (8404) and Prometheus (9101) ports
    # listen here; set 0.0.0.0 only to scrape them from another machine.
    haproxy_side_bind_host: str = "127.0.0.1"
    # One-machine run: Ray's node IP is 127.0.0.1 so every Ray port listens on
    # loopback (Ray otherwise swaps 127.0.0.1 for the machine's address and binds
    # 0.0.0.0). A Ray cluster spanning machines sets it false on every node.
    ray_loopback_only: bool = True
    # Secrets at rest (cluster/crypto/secretbox.py): base64 of 32 bytes. Unset: the
    # key file ``agora up`` creates in var/run/master_key (one machine only).
    # Previous keys (comma-separated) still open what they sealed, until
    # ``agora keys rotate-master`` has re-sealed every row.
    master_key: SecretStr | None = None
    master_key_previous: SecretStr | None = None
    # TLS at the edge (Ray Serve's HAProxy, cluster/haproxy_edge.py): with a PEM
    # certificate (chain) and its key, HAProxy also listens with TLS on tls_port
    # (host: http_host); the plain port stays for Ray's checks and local tools.
    # Unset (the embedded default): no TLS. Needs HAProxy (AGORA_HAPROXY).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_port: int = 8443
    # With no certificate set: make a self-signed one for localhost/127.0.0.1 in
    # var/run (``AGORA_TLS_SELF_SIGNED=1 make run``; clients must trust it explicitly).
    tls_self_signed: bool = False
    # HSTS is sent when the API is reached over TLS (or this is set).
    hsts_max_age_s: int = 31_536_000
    force_hsts: bool = False
    # One JSON access line per request (serve/logs.py; ~35 us each); false: none.
    access_log: bool = True

    # Ledger (issue 8): anchor confirmed orders' hashes on an EVM chain. chain_rpc_url
    # unset: the embedded anvil (var/anvil), with anvil's first dev key when
    # chain_private_key is unset too (that default is refused for any other node).
    chain_rpc_url: str | None = None
    chain_private_key: SecretStr | None = None
    chain_confirmations: int = Field(default=0, ge=0)
    ledger_batch_size: int = Field(default=256, ge=1, le=65_536)
    ledger_batch_interval_s: float = Field(default=2.0, ge=0)

    # Models (issue 9): the FraudScorer and Recommender Serve deployments. The saga
    # waits fraud_model_budget_ms for the model, then screens with the rules.
    models_enabled: bool = True
    fraud_model_budget_ms: int = Field(default=60, ge=1, le=10_000)
    model_threads: int = Field(default=1, ge=1, le=64)  # onnxruntime intra-op, per replica
    model_batch_max: int = Field(default=64, ge=1, le=1024)
    model_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    model_min_replicas: int = Field(default=1, ge=0)
    model_max_replicas: int = Field(default=2, ge=1)
    model_target_ongoing: int = Field(default=8, ge=1)  # Serve autoscaling target per replica
    models_dir: str | None = None  # another artifacts directory (default: the shipped models)
    recommend_recent_s: int = Field(default=3600, ge=60)  # views that count as "recent"

    # Product media (issue 10): uploads checked and thumbnailed by cluster.adapters.media,
    # stored under media_dir (default var/media; local only) and served at /media/.
    media_dir: Path | None = None
    media_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    media_max_pixels: int = Field(default=40_000_000, ge=1, le=250_000_000)
    media_max_images: int = Field(default=20, ge=1, le=200)  # per product
    # Where images are stored instead of media_dir: s3://bucket[/prefix]?endpoint=http://h:p
    # (any S3-compatible store; credentials from the AWS_* env) or file:///dir.
    # cluster.adapters.object_store.
    media_url: str | None = None

    # Analytics (issue 11): the Parquet warehouse (unset: var/warehouse; a directory,
    # file:///dir, or s3://bucket[/prefix]?endpoint=http://h:p&region=r for any
    # S3-compatible store, credentials from the AWS_* env; streams.warehouse_store),
    # how often the consumer lands its journal and compacts day partitions, and
    # product-view events (a bounded per-replica queue straight to Pulsar; overflow
    # is dropped and counted).
    warehouse_url: str | None = None
    warehouse_flush_s: float = Field(default=1.0, gt=0, le=3600)
    warehouse_compact_every_s: float = Field(default=300.0, gt=0)
    views_enabled: bool = True
    views_buffer: int = Field(default=10_000, ge=1, le=1_000_000)
    analytics_max_days: int = Field(default=3660, ge=1)  # the longest report range

    @property
    def warehouse_location(self) -> str:
        """Where the warehouse is: a directory, or an s3:// URL (validated; no secrets)."""
        if not self.warehouse_url:
            return str(self.var_dir / "warehouse")
        path = local_path(self.warehouse_url)
        if path is None:
            parse_s3_url(self.warehouse_url)
            return self.warehouse_url
        return str(path)

    @property
    def warehouse_root(self) -> Path:
        """The warehouse directory; ValueError for an object store (it has none)."""
        path = local_path(self.warehouse_location)
        if path is None:
            raise ValueError("the warehouse is in an object store, not a directory")
        return path

    @property
    def warehouse_journal_dir(self) -> Path | None:
        """The consumer's local journal: None (in the warehouse directory) unless the
        warehouse is in an object store."""
        if local_path(self.warehouse_location) is not None:
            return None
        return self.var_dir / "warehouse-journal"

    # Tracing (issue 12): OpenTelemetry spans from every process `agora up` starts
    # (streams/tracing.py). file: JSON lines under var/traces; console: the Ray
    # worker logs; otlp: OTLP/HTTP to otlp_endpoint (a collector, Jaeger, Tempo).
    tracing: Literal["off", "file", "console", "otlp"] = "file"
    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318/v1/traces
    trace_sample_ratio: float = Field(default=0.1, ge=0.0, le=1.0)  # of new traces

    @property
    def traces_dir(self) -> Path:
        return self.var_dir / "traces"

    @property
    def media_root(self) -> Path:
        return self.media_dir or self.var_dir / "media"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
