"""The ``agora`` command line: up, down, status, scale, migrate, admin, audit, keys.

The Serve application is deployed by its import path (``SERVE_APP``), as
``serve run serve.app:app`` or a Serve config file would, so the cluster layer
never imports the HTTP layer. ``rayenv`` is imported first: Ray reads its auth
settings when it is first imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Ray reads its environment when it is first imported, and some modules below import it.
from cluster import rayenv  # isort: skip

# isort: split
from actors.clients import ShardOps
from actors.session.passwords import PasswordHasher, check_password, normalise_email
from cluster import analytics, backup, db, infra, operator_audit, scaling, supervisor
from cluster.adapters import object_store, signing_keys
from cluster.adapters.rings import PostgresRings
from cluster.adapters.smtp import SmtpSender
from cluster.adapters.webhook_delivery import HttpPoster
from cluster.bootstrap import current_directory, place_shard, shard_directory
from cluster.crypto import secretbox
from cluster.search_reindex import reindex
from cluster.seed import seed_catalog
from cluster.services import ensure_cart_token_secret, service_urls
from cluster.settings import Settings, get_settings
from ledger.actor import LedgerConfig, get_or_create_ledger
from ledger.audit_anchor import LedgerAuditAnchor
from ledger.chain import ANVIL_DEV_KEY
from streams import tracing
from streams.consumers import audit
from streams.consumers.host import HostConfig, get_or_create_consumer
from streams.consumers.notifications import NotificationsConfig, get_or_create_notifications
from streams.consumers.webhooks import WebhooksConfig, get_or_create_webhooks
from streams.events import ORDER_CONFIRMED, topic_for, uuid7
from streams.outbox import RelayConfig, get_or_create_relay, relay_actor_name

SHARD_KINDS = ("cart", "session", "inventory", "order")
SERVE_APP = "serve.app:app"
MODELS_CLI = "serve.models.cli"


def _say(message: str) -> None:
    print(message, flush=True)


async def _migrate_and_seed(database_url: str, products: int) -> tuple[list[int], int]:
    conn = await db.connect(database_url)
    try:
        applied = await db.migrate(conn)
        # Secrets written before sealing existed (or under an older master key).
        async with conn.transaction():
            resealed = await secretbox.reseal_all(conn, secretbox.master_keys())
        if any(resealed.values()):
            _say(f"secrets sealed at rest: {resealed}")
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


def _directory(settings: Settings) -> Any:
    """The shard directory on the durable rings (``agora scale``), so that flushes and
    status reach every shard; the settings' counts when the database does not answer."""
    try:
        return asyncio.run(asyncio.wait_for(current_directory(settings), 10))
    except Exception as exc:
        _say(f"warning: shard rings not read ({type(exc).__name__}); using the settings' counts")
        return shard_directory(settings)


def up(settings: Settings) -> None:
    started = time.monotonic()
    try:  # a bad setting stops here, not as a 500 on the first image
        object_store.open_store(settings.media_url, settings.var_dir / "media")
    except ValueError as exc:
        raise SystemExit(f"agora up: {exc}") from None
    urls = infra.start_services(settings)
    supervisor.start_supervisor(settings)
    ensure_cart_token_secret(settings)
    if secretbox.ensure_master_key_file(settings):
        _say(f"master key created: {settings.run_dir / secretbox.KEY_FILE} (back it up apart)")
    _say("services: " + ", ".join(f"{k}={_redact(v)}" for k, v in urls.items()))
    applied, seeded = asyncio.run(_migrate_and_seed(urls["database"], settings.seed_products))
    if applied:
        _say(f"migrations applied: {applied}")
    if seeded:
        _say(f"demo catalog seeded: {seeded} products")
    infra.start_ray(settings, {"AGORA_VAR_DIR": str(settings.var_dir), **tracing_env(settings)})
    connect_ray(settings)
    deploy(settings, urls)
    _wait_ready(settings, timeout=120)
    base = f"http://{settings.http_host}:{settings.http_port}"
    _say(f"Agora is up in {time.monotonic() - started:.1f}s")
    _say(f"  API      {base}/v1/products")
    _say(f"  docs     {base}/docs  (OpenAPI {base}/openapi.json)")
    _say(f"  health   {base}/readyz   metrics {base}/metrics")
    _say(f"  ray      {infra.ray_address(settings)} (namespace {settings.ray_namespace})")


def tracing_env(settings: Settings) -> dict[str, str]:
    """What every Ray process reads to set up tracing (``streams.tracing``): ours, exported."""
    if settings.traces_dir.is_dir():
        tracing.prune(settings.traces_dir)
    env = {
        "AGORA_TRACING": settings.tracing,
        "AGORA_TRACE_SAMPLE_RATIO": str(settings.trace_sample_ratio),
        "AGORA_TRACES_DIR": str(settings.traces_dir),
    }
    if settings.otlp_endpoint:
        env["AGORA_OTLP_ENDPOINT"] = settings.otlp_endpoint
    return env


def application(import_path: str = SERVE_APP, **options: Any) -> Any:
    """The Serve application at ``module:attribute`` (an application, or a builder of one,
    called with ``options``)."""
    from ray.serve import Application

    module, _, attribute = import_path.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    return target if isinstance(target, Application) else target(**options)


def relay_config(settings: Settings, urls: dict[str, str]) -> RelayConfig:
    return RelayConfig(
        database_url=urls["database"],
        pulsar_url=urls["pulsar"],
        poll_ms=settings.outbox_poll_ms,
        batch_size=settings.outbox_batch_size,
    )


def ledger_config(settings: Settings, urls: dict[str, str]) -> LedgerConfig | None:
    """The ledger's config; None when a chain node is set without a key to sign with."""
    chain = urls.get("chain") or settings.chain_rpc_url
    if settings.chain_private_key is not None:
        key = settings.chain_private_key.get_secret_value()
    elif settings.chain_rpc_url is None:
        key = ANVIL_DEV_KEY  # only for the embedded anvil: a public, well-known dev key
    else:
        key = ""
    if not chain or not key:
        return None
    return LedgerConfig(
        database_url=urls["database"],
        pulsar_url=urls["pulsar"],
        orders_topic=topic_for(
            ORDER_CONFIRMED.name, settings.events_tenant, settings.events_namespace
        ),
        rpc_url=chain,
        private_key=key,
        confirmations=settings.chain_confirmations,
        batch_size=settings.ledger_batch_size,
        batch_interval_s=settings.ledger_batch_interval_s,
    )


def start_ledger(settings: Settings, urls: dict[str, str]) -> None:
    """The ledger actor (get-or-create); it never blocks ``up`` on the chain."""
    config = ledger_config(settings, urls)
    if config is None:
        _say("ledger: not started (AGORA_CHAIN_RPC_URL is set without AGORA_CHAIN_PRIVATE_KEY)")
        return
    get_or_create_ledger(settings.ray_namespace, config)


def deploy(settings: Settings, urls: dict[str, str]) -> None:
    """Create the shard actors and the outbox relay, then deploy the Serve application."""
    import ray
    from ray import serve

    ops = ShardOps(_directory(settings))
    asyncio.run(asyncio.wait_for(ops.ping_all(SHARD_KINDS), 120))
    relay = get_or_create_relay(settings.ray_namespace, relay_config(settings, urls))
    ray.get(relay.health.remote(), timeout=60)
    start_consumers(settings, urls)
    start_ledger(settings, urls)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(application(), name="agora", route_prefix="/")


def notifications_config(settings: Settings, urls: dict[str, str]) -> NotificationsConfig:
    return NotificationsConfig(
        database_url=urls["database"],
        pulsar_url=urls["pulsar"],
        mail_from=settings.mail_from,
        tenant=settings.events_tenant,
        namespace=settings.events_namespace,
        default_locale=settings.mail_default_locale,
        retry_max_s=settings.mail_retry_max_s,
    )


def start_consumers(settings: Settings, urls: dict[str, str]) -> None:
    """The events consumers (issue 11): detached actors, created like the outbox relay."""
    import ray

    smtp = urls.get("smtp")
    if smtp and settings.notifications_consumers:
        config = notifications_config(settings, urls)
        hosts = [
            get_or_create_notifications(settings.ray_namespace, config, SmtpSender(smtp), i)
            for i in range(settings.notifications_consumers)
        ]
        ray.get([host.health.remote() for host in hosts], timeout=60)
    host = HostConfig(database_url=urls["database"], pulsar_url=urls["pulsar"])
    # The chain head is anchored through the ledger (a leaf per head, batched on chain).
    consumer = audit.AuditConsumer(
        settings.events_tenant, settings.events_namespace, anchor=LedgerAuditAnchor
    )
    ray.get(get_or_create_consumer(settings.ray_namespace, host, consumer).health.remote())
    hooks = WebhooksConfig(
        database_url=urls["database"],
        pulsar_url=urls["pulsar"],
        tenant=settings.events_tenant,
        namespace=settings.events_namespace,
        max_backoff_s=settings.webhooks_max_backoff_s,
        give_up_after_s=settings.webhooks_give_up_after_s,
    )
    poster = HttpPoster(allow_private=settings.webhooks_allow_private)
    opener = secretbox.SecretOpener(secretbox.WEBHOOK_SECRET)
    webhooks = get_or_create_webhooks(settings.ray_namespace, hooks, poster, opener)
    ray.get(webhooks.health.remote())
    # The analytics warehouse (Parquet under AGORA_WAREHOUSE_URL, default var/warehouse).
    ray.get(analytics.start_warehouse(settings, host).health.remote())


def audit_verify(
    settings: Settings,
    expect_seq: int | None,
    expect_hash: str | None,
    anchored: bool = False,
    workers: int = 1,
) -> int:
    """Walk the audit chain; 0 when intact, 1 at the first edited, deleted or inserted record.

    ``workers`` processes check seq ranges in one snapshot (``audit.verify_parallel``).
    """
    dsn = service_urls(settings).database

    async def run() -> audit.Verdict:
        pool = await db.create_pool(dsn, max_size=1)
        try:
            expected = None
            if expect_seq is not None and expect_hash:
                expected = audit.Appended(expect_seq, expect_hash)
            elif anchored:
                expected = await LedgerAuditAnchor(pool).anchored()
            if expected is not None:
                _say(f"checking against anchored head {expected.seq} {expected.hash}")
            async with pool.acquire() as conn:
                return await audit.verify(conn, expected, dsn=dsn, workers=workers)
        finally:
            await pool.close()

    started = time.monotonic()
    verdict = asyncio.run(run())
    took = time.monotonic() - started
    head = f"head {verdict.head.seq} {verdict.head.hash}" if verdict.head else "empty"
    if verdict.ok:
        _say(f"audit log intact: {verdict.records} records, {head} ({took:.2f}s)")
        return 0
    _say(f"audit log BROKEN at record {verdict.bad_seq}: {verdict.problem}")
    _say(f"  {verdict.records} records verified before it ({took:.2f}s)")
    return 1


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

    ops = ShardOps(_directory(settings))
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
        },
        "supervisor": supervisor.read_status(settings),
    }
    if not infra.ray_running(settings):
        report["ray"] = "not running"
        print(json.dumps(report, indent=2))
        return 1
    import ray
    from ray import serve

    connect_ray(settings)
    directory = _directory(settings)
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
    report["replicas"] = {  # ``agora scale api=N`` shows here
        f"{name}/{deployment}": {str(k): v for k, v in state.replica_states.items()}
        for name, app in serve.status().applications.items()
        for deployment, state in app.deployments.items()
    }
    print(json.dumps(report, indent=2, default=str))
    return 0


def scale(
    settings: Settings, words: list[str], timeout_s: float = 120.0, node: str | None = None
) -> int:
    """``agora scale cart=8 session=6 api=2 [--node ID]``: shard counts and API replicas,
    live; with ``node``, the shards the rescale adds are created on that Ray node."""
    try:
        targets = scaling.parse_targets(words)
        if node is not None and set(targets) == {scaling.API}:
            raise scaling.ScaleError(
                "--node places the shards a rescale adds; api= alone adds none"
                " (give a shard kind, e.g. cart=8)"
            )
    except scaling.ScaleError as exc:
        _say(f"agora scale: {exc}")
        return 2
    if not infra.ray_running(settings):
        _say("agora scale: Agora is not running (agora up)")
        return 1
    connect_ray(settings)
    place: scaling.Place | None = None
    if node is not None:
        import ray

        try:
            scaling.check_node(node, ray.nodes())
        except scaling.ScaleError as exc:
            _say(f"agora scale: {exc}")
            return 2
        place = shard_placer(settings, node)
    kinds = {kind: n for kind, n in targets.items() if kind != scaling.API}

    async def shards() -> None:
        conn = await db.connect(service_urls(settings).database)
        try:
            ops = ShardOps(shard_directory(settings, rings=await PostgresRings().load_all(conn)))
            for kind, target in kinds.items():
                handoff = await asyncio.wait_for(
                    scaling.rescale(
                        kind,
                        target,
                        rings=PostgresRings(),
                        connect=lambda: contextlib.nullcontext(conn),
                        ops=ops,
                        default_shards=int(getattr(settings, f"{kind}_shards")),
                        place=place,
                    ),
                    timeout_s,
                )
                _say(handoff.describe())
        finally:
            await conn.close()

    try:
        asyncio.run(shards())
    except scaling.ScaleError as exc:
        _say(f"agora scale: {exc}")
        return 2
    except TimeoutError:
        _say(f"agora scale: the handoff did not end in {timeout_s:.0f}s; run the same command"
             " again to resume it (keys being handed over wait meanwhile)")  # fmt: skip
        return 1
    if scaling.API in targets:
        scale_api(targets[scaling.API])
    return 0


def shard_placer(settings: Settings, node_id: str) -> scaling.Place:
    """``agora scale --node``: the hook that creates each shard a rescale adds on Ray node
    ``node_id`` (soft affinity, ``bootstrap.place_shard``: it restarts on any live node once
    that one is gone), in parallel, before the handoff. A shard that already exists (left
    idle by an earlier scale-down) is never moved: it is reused where it runs."""
    import ray

    def node_of(name: str) -> str | None:
        try:
            handle: Any = ray.get_actor(name, namespace=settings.ray_namespace)
        except ValueError:
            return None
        return str(ray.get(handle.stats.remote(), timeout=60)["node_id"])

    def create(name: str) -> str:
        where = node_of(name)
        if where is not None:
            note = "" if where == node_id else f", not on {node_id}: existing shards are not moved"
            return f"{name}: exists already on node {where}{note}"
        try:
            place_shard(settings, name, node_id)
        except RuntimeError as exc:
            kind = name.split(":")[1]
            raise scaling.ScaleError(f"{exc}; {kind} was not rescaled") from None
        return f"{name}: created on node {node_id}"

    async def place(names: list[str]) -> None:
        # In parallel (a new actor takes seconds); reported in order once all are placed.
        for line in await asyncio.gather(*(asyncio.to_thread(create, name) for name in names)):
            _say(line)

    return place


def scale_api(replicas: int) -> None:
    """Redeploy the Serve application with ``replicas`` API replicas (a rolling update:
    Serve starts the new replicas before it stops the old ones)."""
    from ray import serve

    started = time.monotonic()
    serve.run(application(SERVE_APP, num_replicas=replicas), name="agora", route_prefix="/")
    _say(f"api: {replicas} replicas ({time.monotonic() - started:.1f}s)")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def migrate(settings: Settings) -> None:
    secretbox.ensure_master_key_file(settings)
    applied, _ = asyncio.run(_migrate_and_seed(service_urls(settings).database, 0))
    _say(f"migrations applied: {applied or 'none (up to date)'}")


# (tenant, namespace) of the events topics: where the CLI's audit records are queued.
DEFAULT_EVENTS = ("agora", "events")


async def _create_admin(
    database_url: str,
    email: str,
    password: str,
    name: str,
    events: tuple[str, str] = DEFAULT_EVENTS,
) -> str:
    """Create an admin or grant the role; either is recorded in the audit log (``role.grant``)."""
    normalised = normalise_email(email)
    if normalised is None:
        raise SystemExit("not a valid email address")
    conn = await db.connect(database_url)
    try:
        existing = await conn.fetchval(
            "SELECT user_id FROM users WHERE email = $1 AND erased_at IS NULL", normalised
        )
        if existing:
            user_id, done = existing, f"promoted {existing} to admin"
            statement: tuple[Any, ...] = (
                "UPDATE users SET roles = ARRAY(SELECT DISTINCT unnest(roles || ARRAY['admin'])),"
                " updated_at = now() WHERE user_id = $1",
                existing,
            )
        else:
            reason = check_password(password, email=normalised, name=name)
            if reason:
                raise SystemExit(f"password refused: {reason}")
            user_id = str(uuid7())
            done = f"created admin {user_id}"
            statement = (
                "INSERT INTO users (user_id, email, name, password_hash, roles)"
                " VALUES ($1, $2, $3, $4, ARRAY['shopper', 'admin'])",
                user_id,
                normalised,
                name,
                PasswordHasher().hash(password),
            )
        async with conn.transaction():
            await conn.execute(*statement)
            await operator_audit.record_cli_action(
                conn,
                "role.grant",
                user_id,
                {"role": "admin", "created": not existing},
                tenant=events[0],
                namespace=events[1],
            )
        return done
    finally:
        await conn.close()


def admin_create(settings: Settings, email: str, password_stdin: bool, name: str) -> None:
    """Create an admin, or promote an existing account; the password comes from stdin only."""
    password = ""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    events = (settings.events_tenant, settings.events_namespace)
    _say(asyncio.run(_create_admin(service_urls(settings).database, email, password, name, events)))


async def _rotate_signing_key(database_url: str, events: tuple[str, str] = DEFAULT_EVENTS) -> str:
    """A new signing key, recorded in the audit log (``keys.rotate``) in the same transaction."""
    conn = await db.connect(database_url)
    try:
        async with conn.transaction():
            kid = await signing_keys.rotate(conn)
            await operator_audit.record_cli_action(
                conn, "keys.rotate", kid, tenant=events[0], namespace=events[1]
            )
        return kid
    finally:
        await conn.close()


def keys_rotate(settings: Settings) -> None:
    events = (settings.events_tenant, settings.events_namespace)
    kid = asyncio.run(_rotate_signing_key(service_urls(settings).database, events))
    _say(f"new signing key {kid}; the previous one keeps verifying until its tokens expire")


def backup_create(settings: Settings, out_dir: str | None) -> int:
    """Flush the shards' write-behind when Agora runs, then write a backup directory."""
    flushed = False
    if infra.ray_running(settings):
        try:
            connect_ray(settings)
            ops = ShardOps(_directory(settings))
            rows = asyncio.run(asyncio.wait_for(ops.drain_all(SHARD_KINDS), 60))
            _say(f"write-behind flushed: {rows} rows")
            flushed = True
        except Exception as exc:
            _say(f"warning: flush failed ({type(exc).__name__}); the backup may miss the last"
                 f" {settings.flush_interval_ms} ms of cart and stock changes")  # fmt: skip
    target = Path(out_dir) if out_dir else settings.var_dir / "backups"
    try:
        path = asyncio.run(
            backup.create(settings, service_urls(settings).database, target, flushed=flushed)
        )
    except backup.BackupError as exc:
        _say(f"backup failed: {exc}")
        return 1
    files = json.loads((path / backup.MANIFEST).read_text())["files"]
    _say(f"backup written: {path} ({', '.join(files)})")
    return 0


def backup_restore(settings: Settings, path: str) -> int:
    """Restore a backup into a stopped Agora (embedded or AGORA_DATABASE_URL's PostgreSQL)."""
    try:
        restored = asyncio.run(backup.restore(settings, Path(path), settings.database_url))
    except backup.BackupError as exc:
        _say(f"restore refused: {exc}")
        return 1
    _say(f"restored: {', '.join(restored)}; start with `agora up` (it applies newer migrations)")
    return 0


def keys_rotate_master(settings: Settings) -> int:
    """A new master key (key file mode), then every sealed secret re-sealed under it."""
    try:
        keys = (
            secretbox.load_master_keys(settings)
            if settings.master_key is not None
            else secretbox.rotate_master_key_file(settings)
        )
    except secretbox.SecretsError as exc:
        _say(f"rotation refused: {exc}")
        return 1

    async def run() -> dict[str, int]:
        conn = await db.connect(service_urls(settings).database)
        try:
            async with conn.transaction():
                counts = await secretbox.reseal_all(conn, keys)
                await operator_audit.record_cli_action(
                    conn,
                    "keys.rotate_master",
                    None,
                    {"resealed": counts},
                    tenant=settings.events_tenant,
                    namespace=settings.events_namespace,
                )
                return counts
        finally:
            await conn.close()

    counts = asyncio.run(run())
    _say(f"master key {keys.current_id}; re-sealed {sum(counts.values())} secrets: {counts}")
    if settings.master_key is None:
        _say(f"older keys stay in {settings.run_dir / secretbox.PREVIOUS_FILE} (older backups)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agora", description="Run and operate Agora.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything (embedded defaults for unset URLs)")
    sub.add_parser("down", help="stop everything this checkout started")
    sub.add_parser("status", help="what runs: services, shard actors and their nodes")
    scale_parser = sub.add_parser(
        "scale", help="change shard counts and API replicas live (cart=8 session=6 api=2)"
    )
    scale_parser.add_argument("targets", nargs="+", metavar="kind=count")
    scale_parser.add_argument(
        "--node",
        metavar="NODE_ID",
        help="create the shards this rescale adds on this live Ray node (soft affinity: they"
        " restart on any live node if it dies) before keys move to them; shards that already"
        ' run are never moved (ids: agora status, "nodes")',
    )
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
    audit_parser = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    verify_parser = audit_parser.add_parser(
        "verify", help="check the hash chain; exit 1 on an edited or deleted record"
    )
    verify_parser.add_argument("--expect-seq", type=int, help="an anchored head's seq")
    verify_parser.add_argument("--expect-hash", help="an anchored head's hash")
    verify_parser.add_argument(
        "--anchored",
        action="store_true",
        help="also check the newest head the ledger anchored on chain",
    )
    verify_parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes checking the chain in parallel (default: one per core)",
    )
    keys_parser = sub.add_parser("keys", help="token signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys_parser.add_parser("rotate", help="add a new signing key; the old one keeps verifying")
    keys_parser.add_parser(
        "rotate-master", help="new master key (key file) and every secret re-sealed under it"
    )
    backup_parser = sub.add_parser("backup", help="back up and restore the state").add_subparsers(
        dest="backup_command", required=True
    )
    backup_new = backup_parser.add_parser(
        "create", help="database, chain state, media and warehouse into one directory"
    )
    backup_new.add_argument("--out", help="parent directory (default var/backups)")
    backup_back = backup_parser.add_parser(
        "restore", help="verify a backup, then restore it (Agora must be stopped)"
    )
    backup_back.add_argument("path", help="an agora-backup-* directory")
    analytics.add_parser(sub)
    search_parser = sub.add_parser("search", help="catalog search").add_subparsers(
        dest="search_command", required=True
    )
    search_parser.add_parser("reindex", help="every API replica rebuilds its search index")
    models = sub.add_parser(
        "models", help="train / evaluate the ONNX models (agora models --help)", add_help=False
    )
    models.add_argument("models_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    settings = get_settings()
    rayenv.apply()
    if args.command == "up":
        up(settings)
    elif args.command == "down":
        down(settings)
    elif args.command == "status":
        return status(settings)
    elif args.command == "scale":
        return scale(settings, args.targets, node=args.node)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "admin":
        admin_create(settings, args.email, args.password_stdin, args.name)
    elif args.command == "audit":
        return audit_verify(
            settings, args.expect_seq, args.expect_hash, args.anchored, args.workers
        )
    elif args.command == "keys" and args.keys_command == "rotate-master":
        return keys_rotate_master(settings)
    elif args.command == "keys":
        keys_rotate(settings)
    elif args.command == "backup":
        if args.backup_command == "create":
            return backup_create(settings, args.out)
        return backup_restore(settings, args.path)
    elif args.command == "analytics":
        return analytics.main(settings, args)
    elif args.command == "search":
        return reindex(settings)
    elif args.command == "models":
        # By name: the models' command line lives in serve (cluster never imports serve).
        return int(importlib.import_module(MODELS_CLI).main(args.models_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
