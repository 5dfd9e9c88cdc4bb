"""Where the external services are: a URL setting, or the embedded default's address.

``agora up`` starts embedded defaults for unset URLs and records their
addresses in ``var/run/services.json``; every process on the machine (CLI,
actors, Serve replicas, tests) resolves the same addresses through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cluster.settings import Settings, get_settings


@dataclass(frozen=True)
class ServiceUrls:
    database: str
    redis: str
    pulsar: str
    stripe: str
    pix: str
    # Older services.json files (from before the embedded SMTP) have no ``smtp``.
    smtp: str | None = None
    # The ledger's EVM JSON-RPC node (issue 8); older services.json files have none.
    chain: str | None = None


class ServicesNotRunning(RuntimeError):
    """No URL is set and no embedded default has been started (run ``agora up``)."""


def services_file(settings: Settings | None = None):
    settings = settings or get_settings()
    return settings.run_dir / "services.json"


def service_urls(settings: Settings | None = None) -> ServiceUrls:
    settings = settings or get_settings()
    recorded: dict[str, str] = {}
    path = services_file(settings)
    if path.exists():
        recorded = json.loads(path.read_text())
    urls = {}
    for name, value, variable in (
        ("database", settings.database_url, "AGORA_DATABASE_URL"),
        ("redis", settings.redis_url, "AGORA_REDIS_URL"),
        ("pulsar", settings.pulsar_url, "AGORA_PULSAR_URL"),
        ("stripe", settings.stripe_api_base, "AGORA_STRIPE_API_BASE"),
        ("pix", settings.pix_api_base, "AGORA_PIX_API_BASE"),
    ):
        url = value or recorded.get(name)
        if not url:
            raise ServicesNotRunning(f"{name}: set {variable} or run `agora up`")
        urls[name] = url
    smtp = settings.smtp_url or recorded.get("smtp")
    chain = settings.chain_rpc_url or recorded.get("chain")
    return ServiceUrls(**urls, smtp=smtp, chain=chain)


def cart_token_secret(settings: Settings | None = None) -> bytes:
    """The HMAC key for anonymous cart tokens: the setting, else one made by ``agora up``."""
    settings = settings or get_settings()
    if settings.cart_token_secret:
        return settings.cart_token_secret.encode()
    path = settings.run_dir / "cart_token_secret"
    if not path.exists():
        raise ServicesNotRunning("set AGORA_CART_TOKEN_SECRET or run `agora up`")
    return bytes.fromhex(path.read_text().strip())


def pix_webhook_secret(settings: Settings | None = None) -> bytes:
    """The HMAC key of Pix webhooks: the setting, else the one ``agora up`` made."""
    settings = settings or get_settings()
    if settings.pix_webhook_secret:
        return settings.pix_webhook_secret.get_secret_value().encode()
    path = pix_webhook_secret_file(settings)
    if not path.exists():
        raise ServicesNotRunning("set AGORA_PIX_WEBHOOK_SECRET or run `agora up`")
    return bytes.fromhex(path.read_text().strip())


def pix_webhook_secret_file(settings: Settings) -> Path:
    return settings.run_dir / "pix_webhook_secret"


def ensure_cart_token_secret(settings: Settings) -> None:
    import secrets

    path = settings.run_dir / "cart_token_secret"
    if not settings.cart_token_secret and not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
