"""While PostgreSQL is away the API answers 503 problem+json with Retry-After (never 500),
a request stuck on it ends at the server-side deadline, and all recovers when it is back.

Stops the embedded PostgreSQL the way ``agora`` runs it (``cluster.infra``, by the
pid it recorded) and restarts it the same way; skipped when AGORA_DATABASE_URL
points at a database this checkout did not start.
"""

import os
import signal
import time
import urllib.request
import uuid

import httpx
import psutil
import pytest

from cluster import infra
from tests.e2e.problems import assert_problem

pytestmark = pytest.mark.integration


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=3) as reply:
            return reply.status == 200
    except OSError:
        return False


def _wait_ready(base_url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not _ready(base_url):
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz not 200 within {timeout}s")
        time.sleep(0.25)


def _postgres(settings) -> list[psutil.Process]:
    pids = infra.read_pids(settings).get("postgres", [])
    if settings.database_url or not pids:
        pytest.skip("PostgreSQL is not the embedded one this checkout started")
    main = psutil.Process(pids[0])
    return [main, *main.children(recursive=True)]


def _unavailable(reply: httpx.Response) -> None:
    body = assert_problem(reply, 503)
    assert body["type"].endswith("/unavailable"), body
    assert int(reply.headers["Retry-After"]) >= 1


@pytest.fixture(autouse=True)
async def _fresh_test_pool(db):
    """The session's own pool holds connections to the PostgreSQL these tests restart."""
    yield
    await db.expire_connections()


@pytest.fixture()
def shopper(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as http:
        email, password = f"t-{uuid.uuid4().hex}@example.com", uuid.uuid4().hex + "Aa1!"
        assert (
            http.post(
                "/v1/auth/register", json={"email": email, "password": password, "name": "Ana"}
            ).status_code
            == 201
        )
        tokens = http.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        assert tokens.status_code == 200, tokens.text
        yield {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def test_a_stalled_database_meets_the_request_deadline(system, base_url, shopper):
    processes = _postgres(system)
    deadline_s = system.request_deadline_s
    with httpx.Client(base_url=base_url, timeout=deadline_s + 30) as http:
        assert http.get("/v1/me", headers=shopper).status_code == 200
        for proc in processes:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            reply = http.get("/v1/me", headers=shopper)
            took = time.monotonic() - started
        finally:
            for proc in processes:
                os.kill(proc.pid, signal.SIGCONT)
        _unavailable(reply)
        assert took < deadline_s + 5, took
        _wait_ready(base_url)
        assert http.get("/v1/me", headers=shopper).status_code == 200


def test_a_stopped_database_answers_503_then_recovers(system, base_url, shopper):
    pids = [p.pid for p in _postgres(system)][:1]
    with httpx.Client(base_url=base_url, timeout=60) as http:
        assert http.get("/v1/me", headers=shopper).status_code == 200
        infra.stop_postgres(system, pids)
        try:
            for _ in range(3):
                _unavailable(http.get("/v1/me", headers=shopper))
            email = f"t-{uuid.uuid4().hex}@example.com"
            body = {"email": email, "password": uuid.uuid4().hex + "Aa1!", "name": "Ana"}
            _unavailable(http.post("/v1/auth/register", json=body))
            assert http.get("/readyz").status_code == 503
        finally:
            infra.start_postgres(system)
        _wait_ready(base_url)

        def me_ok() -> bool:
            return http.get("/v1/me", headers=shopper).status_code == 200

        deadline = time.monotonic() + 30
        while not me_ok():
            assert time.monotonic() < deadline, "the API did not recover"
            time.sleep(0.25)
