"""Tracing setup and propagation helpers (streams/tracing.py) with the SDK's in-memory exporter.

Each piece that carries a trace across a boundary is checked on its own: the
ingress (incoming ``traceparent``, ``X-Trace-Id``), actor calls (the carrier and
the shell's ``traced`` entry), events (the envelope's ids, the consumer's span),
PostgreSQL (the query logger), outgoing HTTP (the PSPs), the write-behind flush.
"""

import asyncio
import json
import os
from types import SimpleNamespace
from typing import Any

import pulsar
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from actors import clients
from actors.shard import ShardShell
from serve import middleware
from streams import outbox, tracing
from streams.consumer import IdempotentConsumer
from streams.events import ORDER_CONFIRMED, decode, encode, make_event

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


# --- configuration -----------------------------------------------------------------


def test_config_from_env_defaults_off_and_reads_every_knob(tmp_path):
    assert tracing.TracingConfig.from_env({}).mode == "off"
    config = tracing.TracingConfig.from_env(
        {
            "AGORA_TRACING": "OTLP",
            "AGORA_OTLP_ENDPOINT": "http://collector:4318/v1/traces",
            "AGORA_TRACE_SAMPLE_RATIO": "0.25",
            "AGORA_VAR_DIR": str(tmp_path),
        }
    )
    assert config.mode == "otlp"
    assert config.otlp_endpoint == "http://collector:4318/v1/traces"
    assert config.sample_ratio == 0.25
    assert config.directory == str(tmp_path / "traces")
    explicit = tracing.TracingConfig.from_env({"AGORA_TRACES_DIR": "/elsewhere"})
    assert explicit.directory == "/elsewhere"


@pytest.mark.parametrize("env", [{"AGORA_TRACING": "jaeger"}, {"AGORA_TRACE_SAMPLE_RATIO": "1.5"}])
def test_config_refuses_garbage(env):
    with pytest.raises(ValueError):
        tracing.TracingConfig.from_env(env)


def test_exporters_by_mode(tmp_path):
    file_exporter = tracing.exporter_for(
        tracing.TracingConfig("file", directory=str(tmp_path)), "x"
    )
    assert isinstance(file_exporter, tracing.JsonLinesExporter)
    assert file_exporter.path.parent == tmp_path
    assert type(tracing.exporter_for(tracing.TracingConfig("console"), "x")).__name__ == (
        "ConsoleSpanExporter"
    )
    otlp = tracing.exporter_for(tracing.TracingConfig("otlp", otlp_endpoint="http://c:4318"), "x")
    assert type(otlp).__name__ == "OTLPSpanExporter"
    with pytest.raises(ValueError):
        tracing.exporter_for(tracing.TracingConfig("off"), "x")


def test_setup_off_installs_nothing():
    assert tracing.setup(tracing.TracingConfig("off"), "agora-test") is False
    assert not tracing.enabled()
    assert tracing.carrier() is None


def test_setup_file_writes_json_lines(tmp_path):
    config = tracing.TracingConfig("file", directory=str(tmp_path))
    try:
        assert tracing.setup(config, "agora-test") is True
        assert tracing.setup(config, "agora-other") is True  # the first provider stays
        with tracing.span("checkout", attributes={"agora.k": 1}):
            pass
        tracing.shutdown()
        (path,) = tmp_path.glob("agora-test-*.jsonl")
        record = json.loads(path.read_text().splitlines()[0])
    finally:
        tracing.use_provider(None)
    assert record["name"] == "checkout"
    assert record["service"] == "agora-test"
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16
    assert record["parent_span_id"] is None
    assert record["attributes"] == {"agora.k": 1}
    assert record["end_ns"] >= record["start_ns"]


def test_file_exporter_rotates_past_its_limit(tmp_path, spans):
    exporter = tracing.JsonLinesExporter(tmp_path / "a.jsonl", max_bytes=10)
    with tracing.span("one"):
        pass
    with tracing.span("two"):
        pass
    first, second = spans.get_finished_spans()
    exporter.export([first])
    exporter.export([second])
    assert json.loads((tmp_path / "a.jsonl.1").read_text())["name"] == "one"
    assert json.loads((tmp_path / "a.jsonl").read_text())["name"] == "two"


def test_mask_email():
    assert tracing.mask_email("ana.souza@example.com") == "a***@example.com"
    assert tracing.mask_email("not an address") == "***"


# --- propagation -------------------------------------------------------------------


def test_carrier_names_the_current_span_and_extract_continues_it(spans):
    assert tracing.carrier() is None
    with tracing.span("outer") as outer:
        carrier = tracing.carrier()
        assert carrier is not None
        assert carrier["traceparent"] == tracing.traceparent(outer)
    with tracing.span("inner", parent=tracing.extract(carrier)):
        pass
    outer_span, inner_span = spans.get_finished_spans()
    assert inner_span.context.trace_id == outer_span.context.trace_id
    assert inner_span.parent.span_id == outer_span.context.span_id


def test_child_span_only_inside_a_trace(spans):
    with tracing.child_span("lonely") as lonely:
        assert not lonely.is_recording()
    with tracing.span("root"), tracing.child_span("child"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["child", "root"]


def test_an_unsampled_incoming_trace_records_nothing(spans):
    unsampled = tracing.extract({"traceparent": f"00-{TRACE}-{PARENT}-00"})
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_provider(provider)
    with tracing.span("ignored", parent=unsampled) as current:
        assert tracing.trace_id_hex(current) == TRACE
        assert tracing.carrier() is None
    assert spans.get_finished_spans() == ()


class _Method:
    def __init__(self, calls: list[Any], name: str) -> None:
        self.calls, self.name = calls, name

    def remote(self, *args: Any) -> Any:
        self.calls.append((self.name, args))
        return "ref"


class _Handle:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.add_item = _Method(self.calls, "add_item")
        self.traced = _Method(self.calls, "traced")


def test_actor_calls_carry_the_trace_only_inside_one(spans):
    handle = _Handle()
    clients._call(handle, "add_item", "cart-1", 2)
    assert handle.calls == [("add_item", ("cart-1", 2))]
    with tracing.span("request") as request:
        clients._call(handle, "add_item", "cart-1", 3)
    name, (carrier, method, *args) = handle.calls[1]
    assert (name, method, args) == ("traced", "add_item", ["cart-1", 3])
    assert carrier == {"traceparent": tracing.traceparent(request)}


class _Shell:
    """What ``ShardShell.traced`` uses of a shell: its name and its methods."""

    name = "agora:cart:3"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def add_item(self, cart_id: str, quantity: int) -> str:
        self.seen.append(tracing.trace_id_hex())
        return f"{cart_id}x{quantity}"

    def view(self, cart_id: str) -> str:
        return cart_id

    async def _private(self) -> None:
        raise AssertionError("unreachable")


async def test_the_shell_runs_a_traced_call_as_a_child_span(spans):
    shell = _Shell()
    carrier = {"traceparent": TRACEPARENT}
    assert await ShardShell.traced(shell, carrier, "add_item", "c1", 2) == "c1x2"
    assert await ShardShell.traced(shell, carrier, "view", "c2") == "c2"
    assert shell.seen == [TRACE]
    first = spans.get_finished_spans()[0]
    assert first.name == "cart.add_item"
    assert first.kind == SpanKind.SERVER
    assert _hex(first.parent.span_id, 16) == PARENT
    assert first.attributes["agora.shard"] == "agora:cart:3"
    for forbidden in ("_private", "traced", "missing", "name"):
        with pytest.raises(AttributeError):
            await ShardShell.traced(shell, carrier, forbidden)


# --- events ------------------------------------------------------------------------


def _event(**fields: Any) -> Any:
    return make_event(ORDER_CONFIRMED, "o-1", {"order_id": "o-1"}, 1_700_000_000_000, **fields)


def test_stamp_sets_the_producing_span_on_events(spans):
    events = [_event(), _event(trace_id="f" * 32)]
    assert tracing.stamp(events) is events  # outside a trace: untouched
    with tracing.span("shard") as shard:
        stamped = tracing.stamp(events)
    ctx = shard.get_span_context()
    assert stamped[0].trace_id == _hex(ctx.trace_id, 32)
    assert stamped[0].span_id == _hex(ctx.span_id, 16)
    assert stamped[1] is events[1]  # already traced elsewhere: kept
    assert decode(encode(stamped[0])) == stamped[0]


def test_old_envelopes_without_span_id_still_decode():
    event = _event(trace_id=TRACE)
    raw = encode(event).replace(b',"span_id":null', b"")
    assert b"span_id" not in raw
    assert decode(raw).trace_id == TRACE


def test_event_context_needs_tracing_and_valid_ids(spans):
    assert tracing.event_context(_event()) is None
    assert tracing.event_context(_event(trace_id="zz")) is None
    assert tracing.event_context(_event(trace_id="0" * 32)) is None
    assert tracing.event_context(_event(trace_id=TRACE)) is None  # no span id
    event = _event(trace_id=TRACE)
    assert tracing.event_context(type(event)(**{**_fields(event), "span_id": PARENT})) is not None
    tracing.use_provider(None)
    assert tracing.event_context(type(event)(**{**_fields(event), "span_id": PARENT})) is None


def _fields(event: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


class _Recorder(IdempotentConsumer):
    name = "recorder"
    topics = ("persistent://agora/events/orders",)
    max_attempts = 1
    retry_backoff_s = 0.0

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.seen: list[str | None] = []

    async def handle(self, pool: Any, envelope: Any) -> bool:
        self.seen.append(tracing.trace_id_hex())
        if self.fail:
            raise ValueError("cannot apply")
        return True

    async def apply(self, conn: Any, envelope: Any) -> None:
        raise AssertionError("handle is overridden")


async def test_a_consumer_continues_the_producers_trace(spans):
    traced = type(_event())(**{**_fields(_event()), "trace_id": TRACE, "span_id": PARENT})
    consumer = _Recorder()
    assert await consumer._apply_traced(None, traced, asyncio.Event()) is None
    assert await consumer._apply_traced(None, _event(), asyncio.Event()) is None
    assert consumer.seen == [TRACE, None]
    (span,) = spans.get_finished_spans()
    assert span.name == "recorder consume order.confirmed"
    assert span.kind == SpanKind.CONSUMER
    assert _hex(span.parent.span_id, 16) == PARENT
    assert span.attributes["messaging.message.id"] == traced.id
    failing = _Recorder(fail=True)
    assert await failing._apply_traced(None, traced, asyncio.Event()) is not None
    assert spans.get_finished_spans()[-1].status.status_code.name == "ERROR"


def test_a_flush_span_links_the_traced_events_it_commits(spans):
    with tracing.linked_span("flush", [_event()]) as untraced:
        assert not untraced.is_recording()
    traced = [
        type(_event())(**{**_fields(_event()), "trace_id": TRACE, "span_id": PARENT}),
        type(_event())(**{**_fields(_event()), "trace_id": TRACE, "span_id": PARENT}),
    ]
    with tracing.linked_span("flush", traced, attributes={"agora.rows": 2}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert [
        (_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16)) for link in span.links
    ] == [(TRACE, PARENT)]
    record = tracing.span_record(span)
    assert record["links"] == [{"trace_id": TRACE, "span_id": PARENT}]


# --- PostgreSQL and outgoing HTTP ----------------------------------------------------


class _Conn:
    def __init__(self) -> None:
        self.loggers: list[Any] = []

    def add_query_logger(self, callback: Any) -> None:
        self.loggers.append(callback)


def test_queries_become_child_spans_with_the_statement_only(spans):
    conn = _Conn()
    tracing.use_provider(None)
    tracing.instrument_connection(conn)
    assert conn.loggers == []  # tracing off: asyncpg keeps its fast path
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_provider(provider)
    tracing.instrument_connection(conn)
    (logger,) = conn.loggers
    record = SimpleNamespace(
        query="SELECT *\n  FROM users WHERE email = $1", elapsed=0.002, exception=None
    )
    logger(record)  # outside a trace: nothing
    with tracing.span("request"):
        logger(record)
        logger(
            SimpleNamespace(query="insert into t values ($1)", elapsed=0.0, exception=KeyError())
        )
    select, insert, request = spans.get_finished_spans()
    assert select.name == "postgresql SELECT"
    assert select.parent.span_id == request.context.span_id
    assert select.attributes["db.query.text"] == "SELECT * FROM users WHERE email = $1"
    assert select.end_time - select.start_time == pytest.approx(2_000_000, abs=10)
    assert insert.name == "postgresql INSERT"
    assert insert.status.status_code.name == "ERROR"


def test_http_calls_get_a_client_span_and_a_traceparent(spans):
    with tracing.http_call("stripe", "post", "http://127.0.0.1:8420/v1/payment_intents?x=1") as (
        outside,
        headers,
    ):
        assert headers == {} and not outside.is_recording()
    with (
        tracing.span("saga"),
        tracing.http_call("pix", "POST", "http://psp/charges") as (
            call,
            headers,
        ),
    ):
        assert headers == {"traceparent": tracing.traceparent(call)}
    client, _saga = spans.get_finished_spans()
    assert client.name == "pix POST /charges"
    assert client.kind == SpanKind.CLIENT
    assert client.attributes["url.path"] == "/charges"
    assert "x=1" not in json.dumps(tracing.span_record(client))


# --- the ingress ---------------------------------------------------------------------


async def test_the_ingress_continues_an_incoming_trace_and_names_it(spans):
    sent: list[dict[str, Any]] = []

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["state"] = {"request_id": "rid-1"}
        scope["route"] = SimpleNamespace(path="/v1/cart/items")
        assert tracing.carrier() is not None  # the route runs inside the server span
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/cart/items",
        "headers": [(b"traceparent", TRACEPARENT.encode()), (b"authorization", b"Bearer s3cret")],
    }
    await middleware._traced(guarded, scope, None, send)
    assert (b"x-trace-id", TRACE.encode()) in sent[0]["headers"]
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /v1/cart/items"
    assert span.kind == SpanKind.SERVER
    assert _hex(span.parent.span_id, 16) == PARENT
    assert span.attributes["http.response.status_code"] == 201
    assert span.attributes["agora.request_id"] == "rid-1"
    assert "s3cret" not in json.dumps(tracing.span_record(span))


async def test_the_ingress_starts_a_trace_and_marks_server_errors(spans):
    sent: list[dict[str, Any]] = []

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
    await middleware._traced(guarded, scope, None, send)
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code.name == "ERROR"
    assert dict(sent[0]["headers"])[b"x-trace-id"] == _hex(span.context.trace_id, 32).encode()


def test_the_relay_records_a_publish_span_per_traced_event(spans):
    traced = type(_event())(**{**_fields(_event()), "trace_id": TRACE, "span_id": PARENT})
    topic = "persistent://agora/events/orders"
    rows = [
        {"envelope": encode(traced).decode(), "topic": topic},
        {"envelope": encode(_event()).decode(), "topic": topic},  # untraced: no span
        {"envelope": "not json", "topic": topic},  # never fails the relay
        {"envelope": encode(traced).decode(), "topic": topic},
    ]
    results = [pulsar.Result.Ok, pulsar.Result.Ok, pulsar.Result.Ok, pulsar.Result.Timeout]
    outbox._trace_published(rows, results, 1_000)
    ok, failed = spans.get_finished_spans()
    assert ok.name == "outbox publish order.confirmed"
    assert ok.kind == SpanKind.PRODUCER
    assert _hex(ok.parent.span_id, 16) == PARENT and ok.start_time == 1_000
    assert ok.attributes["messaging.destination.name"] == topic
    assert ok.status.status_code.name == "UNSET"
    assert failed.status.status_code.name == "ERROR"


def test_prune_keeps_the_newest_files_within_the_budget(tmp_path):
    for age, name in enumerate(["new.jsonl", "mid.jsonl", "old.jsonl", "old.jsonl.1"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    deleted = tracing.prune(tmp_path, keep_bytes=250)
    assert sorted(p.name for p in deleted) == ["old.jsonl", "old.jsonl.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.jsonl", "new.jsonl"]
