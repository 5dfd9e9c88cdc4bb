"""A new model version goes live on the running system with no restart and no failed call."""

import json
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from serve.models.scoring import ARTIFACTS
from tests.e2e.shoppers import auth, new_product, new_shopper
from tests.e2e.test_checkout import body, key
from tests.e2e.test_fraud_model import fraud_of

pytestmark = pytest.mark.e2e
AGORA = str(Path(sys.executable).parent / "agora")


def swap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AGORA, "models", "swap", *args], capture_output=True, text=True, timeout=120
    )


async def test_agora_models_swap_serves_the_new_version_without_a_failed_call(
    http, db, base_url, tmp_path
):
    version = f"e2e-{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "models"
    shutil.copytree(ARTIFACTS, directory)
    for kind in ("fraud", "recommender"):
        card = directory / f"{kind}.card.json"
        card.write_text(json.dumps({**json.loads(card.read_text()), "version": version}))
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def traffic() -> None:  # recommendations all through the swap
        nonlocal answered
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                reply = client.get("/v1/recommendations", params={"limit": 5})
                answered += 1
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")

    caller = threading.Thread(target=traffic)
    caller.start()
    try:
        done = swap("--dir", str(directory), "--wait", "90")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"FraudScorer: {version} live" in done.stdout, done.stdout
        assert f"Recommender: {version} live" in done.stdout, done.stdout
        shopper = new_shopper(http)
        sku = await new_product(db, 5, price=12_990)
        http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=auth(shopper))
        reply = http.post("/v1/checkout", json=body(), headers={**auth(shopper), **key()})
        assert reply.status_code == 201, reply.text
        fraud = await fraud_of(db, shopper["user_id"])
        assert fraud["reasons"][0] == f"model:{version}", fraud  # checkout used the new one
    finally:
        back = swap("--wait", "90")  # the default models again, whatever happened
        stop.set()
        caller.join()
    assert back.returncode == 0, back.stdout + back.stderr
    assert answered > 10 and failures == [], failures[:5]
