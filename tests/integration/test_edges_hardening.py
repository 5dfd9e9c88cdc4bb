"""Hardened edges on the running system (default ingress: Ray Serve's HAProxy).

* The real client address reaches the per-IP rate limit: clients bound to
  127.0.0.2 and 127.0.0.3 get separate budgets, and a forged X-Forwarded-For
  does not buy a fresh one.
* No socket of ours listens on every interface unless a setting asks for it
  (HAProxy stats 8404 and Prometheus 9101 included, every Ray port).
* Security headers on every kind of response.
"""

import asyncio
import itertools
import json
import secrets
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis.asyncio as aioredis

from cluster import infra
from cluster.services import cart_token_secret
from serve.ratelimit import Limit, RateLimiter

pytestmark = pytest.mark.integration

WILDCARDS = {"0.0.0.0", "::", "*"}


def _haproxy_ingress(settings) -> bool:
    return infra.ray_env(settings).get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


async def _drain(limiter: RateLimiter, limit: Limit, subject: str, stop: asyncio.Event) -> None:
    """Keep ``subject``'s budget in Redis at zero, faster than it refills."""
    while not stop.is_set():
        left = (await limiter.peek(limit, subject)).remaining
        if left >= 1:
            await limiter.hit(limit, subject, left)
        await asyncio.sleep(0.005)


async def _first_429(base_url: str, source: str, headers: dict[str, str]) -> int:
    """Requests from ``source`` to a /v1/ path until one is 429; how many were sent."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=30) as http:
        for sent in itertools.count(1):
            reply = await http.get("/v1/-/budget-probe", headers=headers)
            if reply.status_code == 429:
                return sent
            assert reply.status_code == 404, reply.text
            assert time.monotonic() < deadline, f"{source}: no 429 after {sent} requests"
    raise AssertionError("unreachable")


def _status_from(base_url: str, source: str) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=base_url, transport=transport, timeout=30) as http:
        return http.get("/v1/-/budget-probe").status_code


async def test_two_client_addresses_get_separate_budgets(system, base_url, services):
    if not _haproxy_ingress(system):
        pytest.skip("HAProxy ingress not in use (no /usr/sbin/haproxy)")
    # Fresh loopback addresses (all of 127/8 is ours), so earlier runs spent nothing here.
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    spender, framed, other = f"{net}.2", f"{net}.3", f"{net}.4"
    # Every request forges both forwarding headers in the name of another address.
    forged = {"X-Forwarded-For": framed, "Forwarded": f"for={framed}"}
    redis = aioredis.from_url(services.redis)
    limiter = RateLimiter(redis, secret=cart_token_secret(system))
    api = Limit("api-ip", system.api_requests_per_ip, system.api_requests_period_s)
    # The limit is a rate (6,000 per 60 s refills 100 a second), more than a small box
    # can send; so the spender's budget is spent in Redis directly and kept at zero, and
    # its requests must then be refused: only its socket address can name that budget.
    stop = asyncio.Event()
    drain = asyncio.create_task(_drain(limiter, api, spender, stop))
    try:
        await asyncio.sleep(0.1)
        await _first_429(base_url, spender, forged)
        # Meanwhile another address is served: budgets are per address.
        assert _status_from(base_url, other) == 404
        # And the address the headers named was never charged.
        charged = await limiter.peek(api, framed)
        assert charged.remaining == api.limit, "the forged address was charged"
    finally:
        stop.set()
        await drain
        await redis.aclose()


def _our_processes(settings) -> list[psutil.Process]:
    roots = list(infra._ray_processes(settings))
    for name, pids in infra.read_pids(settings).items():
        for pid in pids:
            try:
                roots.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
    family: dict[int, psutil.Process] = {}
    for proc in roots:
        family[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                family[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(family.values())


def test_no_socket_of_ours_listens_on_every_interface(system, base_url):
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
    allowed: set[int] = set()
    if system.http_host in WILDCARDS:
        allowed.add(system.http_port)
    if system.haproxy_side_bind_host in WILDCARDS:
        allowed |= {8404, 9101}
    processes = _our_processes(system)
    names = {p.name() for p in processes if p.is_running()}
    assert "gcs_server" in names and "raylet" in names, names
    listening, exposed = [], []
    for proc in processes:
        try:
            sockets = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in sockets:
            if conn.status != psutil.CONN_LISTEN:
                continue
            listening.append((name, conn.laddr.ip, conn.laddr.port))
            if conn.laddr.ip in WILDCARDS and conn.laddr.port not in allowed:
                exposed.append((name, proc.pid, conn.laddr.ip, conn.laddr.port))
    assert len(listening) > 5, listening
    if _haproxy_ingress(system):
        assert ("haproxy", "127.0.0.1", 8404) in listening, listening
    assert not exposed, f"listening on every interface: {exposed}"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/healthz", {}),
        ("GET", "/v1/products", {}),
        ("GET", "/v1/no-such-route", {}),
        ("POST", "/v1/auth/register", {"json": {"email": "x"}}),
        ("POST", "/v1/auth/register", {"content": b"x" * 70_000}),
    ],
)
def test_security_headers_on_every_response(base_url, method, path, kwargs):
    reply = httpx.request(method, f"{base_url}{path}", timeout=30, **kwargs)
    assert reply.status_code < 500, reply.text
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["referrer-policy"] == "no-referrer"
    # Plain HTTP from a client: no HSTS (it would be ignored, and pins nothing).
    assert "strict-transport-security" not in reply.headers


def test_a_client_cannot_claim_https_through_the_ingress(system, base_url):
    """HAProxy sets X-Forwarded-Proto from the connection, so a client's own claim is gone."""
    if not _haproxy_ingress(system):
        pytest.skip("HAProxy ingress not in use (no /usr/sbin/haproxy)")
    reply = httpx.get(f"{base_url}/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert reply.status_code == 200
    assert "strict-transport-security" not in reply.headers


def _ray_logs(settings) -> list[Path]:
    logs_dir = infra.ray_temp_dir(settings) / "session_latest" / "logs"
    return [p for p in logs_dir.rglob("*") if p.is_file() and p.suffix in {".log", ".err", ".out"}]


def test_a_login_leaves_no_secret_in_the_logs_and_an_access_line_per_request(system, base_url):
    password = "Pw-" + secrets.token_urlsafe(18)
    email = f"logs-{secrets.token_hex(6)}@example.com"
    rid = "it-" + secrets.token_hex(8)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        created = http.post(
            "/v1/auth/register", json={"email": email, "password": password, "name": "Log"}
        )
        assert created.status_code == 201, created.text
        tokens = http.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        assert tokens.status_code == 200, tokens.text
        access = tokens.json()["access_token"]
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {access}", "X-Request-ID": rid})
        assert me.status_code == 200 and me.headers["x-request-id"] == rid
    secrets_seen, access_line = [], None
    deadline = time.monotonic() + 15
    while access_line is None and time.monotonic() < deadline:
        time.sleep(0.5)
        for path in _ray_logs(system):
            text = path.read_text(errors="replace")
            for secret in (password, access, tokens.json()["refresh_token"], email):
                if secret in text:
                    secrets_seen.append((path.name, secret[:6]))
            for line in text.splitlines():
                if f'"request_id": "{rid}"' in line:
                    access_line = json.loads(line[line.index("{") :])
    assert not secrets_seen, secrets_seen
    assert access_line is not None, "no access log line for the request"
    assert access_line["route"] == "/v1/me" and access_line["status"] == 200
    assert access_line["client"] == "127.0.0.1" and access_line["logger"] == "agora.access"
