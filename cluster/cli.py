"""The ``agora`` command line: up, down, status, migrate, admin, keys.

The Serve application is deployed by its import path (``SERVE_APP``), as
``serve run serve.app:app`` or a Serve config file would, so the cluster layer
never imports the HTTP layer. ``rayenv`` is imported first: Ray reads its auth
settings when it is first imported.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from actors.clients import ShardOps
from actors.session.passwords import PasswordHasher, check_password, normalise_email
from cluster import db, infra, rayenv
from cluster.adapters import signing_keys
from cluster.bootstrap import shard_directory
from cluster.seed import seed_catalog
from cluster.services import ensure_cart_token_secret, service_urls
from cluster.settings import Settings, get_settings
from streams.events import uuid7
from streams.outbox import RelayConfig, get_or_create_relay, relay_actor_name

SHARD_KINDS = ("cart", "session", "inventory", "order")
SERVE_APP = "serve.app:app"


def _say(message: str) -> None:
    print(message, flush=True)


async def _migrate_and_seed(database_url: str, products: int) -> tuple[list[int], int]:
    conn = await db.connect(database_url)
    try:
        applied = await db.migrate(conn)
        await signing_keys.ensure_key(conn)
        seeded = await seed_catalog(conn, products) if products else 0
    finally:
        await conn.close()
    return applied, seeded


def connect_ray(settings: Settings) -> None:
    """Connect this process to our Ray head (token auth, our namespace)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=infra.ray_address(settings),
            namespace=settings.ray_namespace,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def _wait_ready(settings: Settings, timeout: float) -> None:
    url = f"http://{settings.http_host}:{settings.http_port}/readyz"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def up(settings: Settings) -> None:
    started = time.monotonic()
    urls = infra.start_services(settings)
    ensure_cart_token_secret(settings)
    _say("services: " + ", ".join(f"{k}={_redact(v)}" for k, v in urls.items()))
    applied, seeded = asyncio.run(_migrate_and_seed(urls["database"], settings.seed_products))
    if applied:
        _say(f"migrations applied: {applied}")
    if seeded:
        _say(f"demo catalog seeded: {seeded} products")
    infra.start_ray(settings, {"AGORA_VAR_DIR": str(settings.var_dir)})
    connect_ray(settings)
    deploy(settings, urls)
    _wait_ready(settings, timeout=120)
    base = f"http://{settings.http_host}:{settings.http_port}"
    _say(f"Agora is up in {time.monotonic() - started:.1f}s")
    _say(f"  API      {base}/v1/products")
    _say(f"  docs     {base}/docs  (OpenAPI {base}/openapi.json)")
    _say(f"  health   {base}/readyz   metrics {base}/metrics")
    _say(f"  ray      {infra.ray_address(settings)} (namespace {settings.ray_namespace})")


def application(import_path: str = SERVE_APP) -> Any:
    """The Serve application at ``module:attribute`` (an application, or a builder of one)."""
    from ray.serve import Application

    module, _, attribute = import_path.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    return target if isinstance(target, Application) else target()


def relay_config(settings: Settings, urls: dict[str, str]) -> RelayConfig:
    return RelayConfig(
        database_url=urls["database"],
        pulsar_url=urls["pulsar"],
        poll_ms=settings.outbox_poll_ms,
        batch_size=settings.outbox_batch_size,
    )


def deploy(settings: Settings, urls: dict[str, str]) -> None:
    """Create the shard actors and the outbox relay, then deploy the Serve application."""
    import ray
    from ray import serve

    ops = ShardOps(shard_directory(settings))
    asyncio.run(asyncio.wait_for(ops.ping_all(SHARD_KINDS), 120))
    relay = get_or_create_relay(settings.ray_namespace, relay_config(settings, urls))
    ray.get(relay.health.remote(), timeout=60)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(application(), name="agora", route_prefix="/")


def down(settings: Settings) -> None:
    if infra.ray_running(settings):
        try:
            connect_ray(settings)
            # No serve.shutdown(): it waits ~30 s for replicas to drain, and the API
            # holds no state; the shards and the outbox were just flushed.
            _drain(settings)
        except Exception as exc:
            _say(f"warning: graceful drain failed ({type(exc).__name__}); stopping anyway")
    stopped = infra.stop_all(settings)
    _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _drain(settings: Settings) -> None:
    """Final flush of every shard and the outbox before the processes go."""
    import ray

    ops = ShardOps(shard_directory(settings))
    flushed = asyncio.run(asyncio.wait_for(ops.drain_all(SHARD_KINDS), 60))
    _say(f"final flush: {flushed} rows")
    try:
        relay = ray.get_actor(relay_actor_name(), namespace=settings.ray_namespace)
        sent: Any = ray.get(relay.drain.remote(), timeout=60)
        _say(f"outbox drained: {sent} events")
    except ValueError:
        pass


def status(settings: Settings) -> int:
    pids = infra.read_pids(settings)
    report: dict[str, Any] = {
        "services": {
            name: {"pids": p, "alive": all(infra.alive(x) for x in p)} for name, p in pids.items()
        }
    }
    if not infra.ray_running(settings):
        report["ray"] = "not running"
        print(json.dumps(report, indent=2))
        return 1
    import ray
    from ray import serve

    connect_ray(settings)
    directory = shard_directory(settings)
    ops = ShardOps(directory)
    shards = []
    for name in [n for kind in SHARD_KINDS for n in directory.shard_names(kind)]:
        try:
            shards.append(asyncio.run(asyncio.wait_for(ops.stats(name), 5)))
        except Exception as exc:
            shards.append({"name": name, "error": type(exc).__name__})
    report["shards"] = shards
    report["nodes"] = [
        {"node_id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"]}
        for n in ray.nodes()
    ]
    report["serve"] = {name: str(app.status) for name, app in serve.status().applications.items()}
    print(json.dumps(report, indent=2, default=str))
    return 0


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def migrate(settings: Settings) -> None:
    applied, _ = asyncio.run(_migrate_and_seed(service_urls(settings).database, 0))
    _say(f"migrations applied: {applied or 'none (up to date)'}")


async def _create_admin(database_url: str, email: str, password: str, name: str) -> str:
    normalised = normalise_email(email)
    if normalised is None:
        raise SystemExit("not a valid email address")
    conn = await db.connect(database_url)
    try:
        existing = await conn.fetchval(
            "SELECT user_id FROM users WHERE email = $1 AND erased_at IS NULL", normalised
        )
        if existing:
            await conn.execute(
                "UPDATE users SET roles = ARRAY(SELECT DISTINCT unnest(roles || ARRAY['admin'])),"
                " updated_at = now() WHERE user_id = $1",
                existing,
            )
            return f"promoted {existing} to admin"
        reason = check_password(password, email=normalised, name=name)
        if reason:
            raise SystemExit(f"password refused: {reason}")
        user_id = str(uuid7())
        await conn.execute(
            "INSERT INTO users (user_id, email, name, password_hash, roles)"
            " VALUES ($1, $2, $3, $4, ARRAY['shopper', 'admin'])",
            user_id,
            normalised,
            name,
            PasswordHasher().hash(password),
        )
        return f"created admin {user_id}"
    finally:
        await conn.close()


def admin_create(settings: Settings, email: str, password_stdin: bool, name: str) -> None:
    """Create an admin, or promote an existing account; the password comes from stdin only."""
    password = ""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    _say(asyncio.run(_create_admin(service_urls(settings).database, email, password, name)))


def keys_rotate(settings: Settings) -> None:
    async def run() -> str:
        conn = await db.connect(service_urls(settings).database)
        try:
            return await signing_keys.rotate(conn)
        finally:
            await conn.close()

    kid = asyncio.run(run())
    _say(f"new signing key {kid}; the previous one keeps verifying until its tokens expire")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agora", description="Run and operate Agora.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything (embedded defaults for unset URLs)")
    sub.add_parser("down", help="stop everything this checkout started")
    sub.add_parser("status", help="what runs: services, shard actors and their nodes")
    sub.add_parser("migrate", help="apply pending database migrations")
    admin = sub.add_parser("admin", help="operator accounts").add_subparsers(
        dest="admin_command", required=True
    )
    create = admin.add_parser("create", help="create an admin or promote an existing account")
    create.add_argument("email")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    create.add_argument("--name", default="Operator")
    keys_parser = sub.add_parser("keys", help="token signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys_parser.add_parser("rotate", help="add a new signing key; the old one keeps verifying")
    args = parser.parse_args(argv)
    settings = get_settings()
    rayenv.apply()
    if args.command == "up":
        up(settings)
    elif args.command == "down":
        down(settings)
    elif args.command == "status":
        return status(settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "admin":
        admin_create(settings, args.email, args.password_stdin, args.name)
    elif args.command == "keys":
        keys_rotate(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
