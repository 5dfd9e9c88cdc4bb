"""Self-healing: kill each embedded service by its recorded pid; the supervisor that
``agora up`` started brings it back on the same address, /readyz turns 200 again
without a human, and a checkout made after the recovery lands: order confirmed, payment
row written, its events published by the outbox relay (PostgreSQL, shards, PSP, Pulsar).

Prints the recovery figures (run with ``-s`` to see them). Target: a killed
PostgreSQL recovered in < 30 s. Services given by URL settings are skipped.
"""

import json
import os
import signal
import time
import urllib.request
import uuid

import httpx
import pytest

from cluster import db as agora_db
from cluster import infra
from cluster.settings import get_settings
from tests.e2e.shoppers import auth, new_shopper

pytestmark = pytest.mark.integration

POSTGRES_TARGET_S = 30.0
ANY_SERVICE_LIMIT_S = 60.0
FIGURES: dict[str, dict[str, float]] = {}

ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


def _names() -> list[str]:
    settings = get_settings()
    return sorted(set(infra.SUPERVISED) | set(infra.read_starters(settings)) - infra.NOT_SUPERVISED)


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _wait(check, timeout: float, what: str, interval: float = 0.1) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    if FIGURES:
        print("\nself-healing recovery (seconds from kill):")
        print(f"  {'service':<12} {'restarted':>9} {'readyz':>8} {'write':>8}")
        for name, f in FIGURES.items():
            print(f"  {name:<12} {f['restarted']:>9.2f} {f['ready']:>8.2f} {f['write']:>8.2f}")


async def _new_product(db_url: str, on_hand: int = 50) -> str:
    sku = f"TST-{uuid.uuid4().hex[:12].upper()}"
    conn = await agora_db.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO products (sku, name, description, category, price_minor)"
            " VALUES ($1, 'Heal item', 'For tests', 'test', 4990)",
            sku,
        )
        await conn.execute("INSERT INTO inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand)
    finally:
        await conn.close()
    return sku


async def _landed(db_url: str, order_id: str) -> bool:
    """Payment row written and every event of the order published (outbox sent)."""
    conn = await agora_db.connect(db_url)
    try:
        paid = await conn.fetchval(
            "SELECT status FROM payments WHERE key = $1", order_id, timeout=5
        )
        events, unsent = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM outbox WHERE key = $1",
            order_id,
            timeout=5,
        )
    finally:
        await conn.close()
    return paid == "succeeded" and events > 0 and unsent == 0


def _checkout(http: httpx.Client, shopper: dict[str, str], sku: str) -> httpx.Response:
    headers = auth(shopper)
    added = http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers)
    if added.status_code != 200:
        return added
    return http.post(
        "/v1/checkout",
        json={
            "shipping_address": ADDRESS,
            "shipping_method": "standard",
            "payment": {"method": "card", "token": "pm_card_visa"},
        },
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )


COLLECTED = _names()


@pytest.mark.parametrize("name", COLLECTED)
async def test_a_killed_service_comes_back_by_itself(system, base_url, db_url, name):
    if name not in infra.read_pids(system):
        pytest.skip(f"{name} is not an embedded service this checkout started")
    await _kill_and_recover(system, base_url, db_url, name)


async def test_services_found_at_run_time_come_back_too(system, base_url, db_url):
    """Services recorded by a start function the collection did not know yet (registry)."""
    recorded = set(infra.read_pids(system)) - infra.NOT_SUPERVISED
    assert recorded <= set(infra.supervised(system)), "a recorded service is not supervised"
    later = sorted(recorded - set(COLLECTED))
    if not later:
        pytest.skip("every recorded service was collected above")
    for name in later:
        await _kill_and_recover(system, base_url, db_url, name)


async def _kill_and_recover(system, base_url, db_url, name):
    pids = infra.read_pids(system)
    supervisor = pids.get(infra.SUPERVISOR, [])
    assert supervisor and all(infra.alive(p) for p in supervisor), "agora up started no supervisor"
    urls_before = json.loads((system.run_dir / "services.json").read_text())
    _wait(lambda: _ready(base_url), 90, "/readyz before the kill")
    sku = await _new_product(db_url)
    with httpx.Client(base_url=base_url, timeout=60) as http:
        shopper = new_shopper(http)
        old = pids[name]
        killed_at = time.monotonic()
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            now = infra.read_pids(system).get(name, [])
            return bool(now) and now != old and all(infra.alive(p) for p in now)

        t_restart = _wait(restarted, ANY_SERVICE_LIMIT_S, f"{name} restarted")
        _wait(lambda: _ready(base_url), ANY_SERVICE_LIMIT_S, "/readyz 200 after the restart")
        t_ready = time.monotonic() - killed_at

        # The first write after recovery: retried while pools and clients reconnect.
        order_id = None
        deadline = time.monotonic() + ANY_SERVICE_LIMIT_S
        while order_id is None:
            reply = _checkout(http, shopper, sku)
            if reply.status_code == 201:
                order_id = reply.json()["id"]
                assert reply.json()["status"] == "confirmed", reply.text
            elif time.monotonic() > deadline:
                raise AssertionError(f"no checkout after {name} came back: {reply.text}")
            else:
                time.sleep(0.5)
        landed_deadline = time.monotonic() + 30
        while not await _landed(db_url, order_id):
            assert time.monotonic() < landed_deadline, f"order {order_id} did not land"
            time.sleep(0.2)
        t_write = time.monotonic() - killed_at

    assert json.loads((system.run_dir / "services.json").read_text()) == urls_before
    FIGURES[name] = {"restarted": t_restart, "ready": t_ready, "write": t_write}
    if name == "postgres":
        assert t_ready < POSTGRES_TARGET_S, f"PostgreSQL recovered in {t_ready:.1f}s"
