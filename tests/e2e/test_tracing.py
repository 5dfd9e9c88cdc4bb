"""One checkout, one trace: ingress -> order shard -> inventory shards -> PostgreSQL -> PSP ->
outbox -> consumer, all found in var/traces under the trace id the client chose.

Needs the system `make run` starts with AGORA_TRACING=file (the default).
"""

import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cluster.settings import get_settings
from tests.e2e.shoppers import auth, new_product, new_shopper

pytestmark = pytest.mark.e2e

ADDRESS = {
    "name": "Ana Souza",
    "line1": "Av. Paulista, 1000",
    "city": "São Paulo",
    "state": "SP",
    "postal_code": "01310-100",
    "country": "BR",
}


def spans_of(trace_id: str, traces: Path) -> list[dict[str, Any]]:
    found = []
    for path in traces.glob("*.jsonl*"):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if trace_id in line:
                    record = json.loads(line)
                    if record["trace_id"] == trace_id:
                        found.append(record)
    return found


def orphans(spans: list[dict[str, Any]], root_parent: str) -> list[str]:
    """Names of spans whose parent is neither in the trace nor the client's span."""
    ids = {s["span_id"] for s in spans} | {root_parent}
    return [s["name"] for s in spans if s["parent_span_id"] not in ids]


def wait_for(
    trace_id: str,
    traces: Path,
    wanted: dict[str, Any],
    root_parent: str,
    timeout_s: float = 30.0,
):
    """The trace's spans once every ``wanted`` predicate matches one and every parent is
    written (or the last look). Each process exports in batches and a parent ends after its
    children, so a child can reach the file a batch before its parent does."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = spans_of(trace_id, traces)
        missing = [name for name, match in wanted.items() if not any(map(match, spans))]
        if (not missing and not orphans(spans, root_parent)) or time.monotonic() > deadline:
            return spans, missing
        time.sleep(0.5)


async def test_a_checkout_is_one_trace_from_ingress_to_consumer(http, db, system):
    if system.tracing != "file":
        pytest.skip("needs AGORA_TRACING=file")
    traces = system.traces_dir
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = {"traceparent": f"00-{trace_id}-{parent}-01"}
    shopper = new_shopper(http)
    sku = await new_product(db, 3, price=4_990)
    headers = auth(shopper)
    added = http.post("/v1/cart/items", json={"sku": sku, "quantity": 1}, headers=headers)
    assert added.status_code == 200, added.text
    assert len(added.headers["x-trace-id"]) == 32  # every response names its trace

    reply = http.post(
        "/v1/checkout",
        json={
            "shipping_address": ADDRESS,
            "shipping_method": "standard",
            "payment": {"method": "card", "token": "pm_card_visa"},
        },
        headers={**headers, **traceparent, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["x-trace-id"] == trace_id
    order_id = reply.json()["id"]

    wanted = {
        "ingress": lambda s: (
            s["service"] == "agora-api"
            and s["kind"] == "SERVER"
            and s["name"] == "POST /v1/checkout"
            and s["parent_span_id"] == parent
        ),
        "order shard": lambda s: s["service"] == "agora-order" and s["name"] == "order.checkout",
        "inventory shard": lambda s: (
            s["service"] == "agora-inventory" and s["name"] == "inventory.reserve_many"
        ),
        "postgresql": lambda s: s["name"].startswith("postgresql ") and s["kind"] == "CLIENT",
        "psp": lambda s: s["name"].startswith("stripe POST /v1/payment_intents"),
        "outbox": lambda s: s["name"] == "outbox publish order.confirmed",
        "consumer": lambda s: s["kind"] == "CONSUMER" and s["name"].endswith("order.confirmed"),
    }
    spans, missing = wait_for(trace_id, traces, wanted, parent)
    assert not missing, f"missing {missing} among {sorted({s['name'] for s in spans})}"

    # One server span per request (FastAPI's own telemetry stays off).
    assert [s["kind"] for s in spans if s["service"] == "agora-api"].count("SERVER") == 1
    # One tree: every span's parent is in the trace, or is the client's span.
    assert not orphans(spans, parent)
    ids = {s["span_id"] for s in spans}
    # The event that left through the outbox carries the trace.
    row = await db.fetchrow(
        "SELECT envelope FROM outbox WHERE key = $1 AND type = 'order.confirmed'", order_id
    )
    envelope = row["envelope"] if isinstance(row["envelope"], dict) else json.loads(row["envelope"])
    assert envelope["trace_id"] == trace_id
    assert envelope["span_id"] in ids
    # No secrets: not the bearer token, the card token or the shopper's e-mail.
    text = json.dumps(spans)
    for secret in (headers["Authorization"].split()[1], "pm_card_visa", shopper["email"]):
        assert secret not in text


def test_settings_default_to_file_traces():
    assert get_settings().model_fields["tracing"].default == "file"
