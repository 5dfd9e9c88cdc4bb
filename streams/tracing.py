"""OpenTelemetry tracing for every Agora process: one setup call, W3C propagation helpers.

Each process that serves traffic calls ``setup(TracingConfig.from_env(), service)``
once at start: an API replica (``serve.app.Api``), a shard actor (its env factory in
``cluster.bootstrap``), the outbox relay and every events consumer. ``agora up``
exports ``AGORA_TRACING`` and friends to Ray, so every worker reads the same
configuration from its environment; a process nobody configured (a unit test, a
script) traces nothing.

Modes: ``off``; ``file`` (JSON lines under ``var/traces/<service>-<pid>.jsonl``, one
span a line); ``console`` (the SDK's console exporter, into the worker's log);
``otlp`` (OTLP/HTTP protobuf to ``AGORA_OTLP_ENDPOINT``). Spans are exported by a
background thread in batches, so a request pays for building its spans only.

Propagation is W3C Trace Context everywhere: the ``traceparent`` header at the
ingress and towards the PSPs, a ``traceparent`` carrier dict on actor calls (Ray
carries no OpenTelemetry context by itself; ``actors.clients`` passes it), and the
event envelope's ``trace_id``/``span_id`` through the outbox to the consumers.

Nothing here starts a trace on its own but the ingress span and the linked flush
span: database queries, actor calls and consumers only add spans to a trace that
is already sampled, so background polling never floods the exporter. No attribute
carries a header, a token, a key's secret or an e-mail address (``mask_email``).

This module imports nothing of ours, so every package may use it (``actors`` only
for propagation: they never call ``setup``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

MODES = ("off", "file", "console", "otlp")
# Spans leave in batches from a background thread; short delay so a trace is
# readable in var/traces about a second after the request.
EXPORT_DELAY_MS = 500
MAX_QUERY_CHARS = 300
MAX_LINKS = 64  # links on one flush span (a batch may hold hundreds of requests' events)

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP_TRACER: trace.Tracer = trace.NoOpTracer()


@dataclass(frozen=True)
class TracingConfig:
    """How this process exports spans; ``from_env`` reads what ``agora up`` exported."""

    mode: str = "off"
    otlp_endpoint: str | None = None
    sample_ratio: float = 1.0
    directory: str = "var/traces"
    max_file_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"AGORA_TRACING must be one of {', '.join(MODES)}: {self.mode!r}")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError("AGORA_TRACE_SAMPLE_RATIO must be between 0 and 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracingConfig:
        env = os.environ if environ is None else environ
        var_dir = env.get("AGORA_VAR_DIR") or "var"
        return cls(
            mode=(env.get("AGORA_TRACING") or "off").strip().lower(),
            otlp_endpoint=env.get("AGORA_OTLP_ENDPOINT") or None,
            sample_ratio=float(env.get("AGORA_TRACE_SAMPLE_RATIO") or 1.0),
            directory=env.get("AGORA_TRACES_DIR") or str(Path(var_dir) / "traces"),
        )


class _State:
    """This process's tracer; the no-op tracer until ``setup`` or ``use_provider``."""

    lock = threading.Lock()
    provider: TracerProvider | None = None
    tracer: trace.Tracer = _NOOP_TRACER
    enabled = False


def setup(config: TracingConfig, service: str) -> bool:
    """Install this process's tracer provider once; True when tracing is on.

    A second call (another shard in the same worker, a restarted consumer loop)
    keeps the first provider: one process, one exporter.
    """
    if config.mode == "off":
        return _State.enabled
    with _State.lock:
        if _State.provider is not None:
            return True
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "process.pid": os.getpid()}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        provider.add_span_processor(
            BatchSpanProcessor(exporter_for(config, service), schedule_delay_millis=EXPORT_DELAY_MS)
        )
        _install(provider)
    # The global provider too, for any library that traces through the API.
    trace.set_tracer_provider(provider)
    log.info("tracing: %s for %s", config.mode, service)
    return True


def exporter_for(config: TracingConfig, service: str) -> SpanExporter:
    """The exporter a mode names (``off`` has none)."""
    if config.mode == "file":
        path = Path(config.directory) / f"{service}-{os.getpid()}.jsonl"
        return JsonLinesExporter(path, max_bytes=config.max_file_bytes)
    if config.mode == "console":
        return ConsoleSpanExporter(service_name=service)
    if config.mode == "otlp":
        # Imported here: it pulls protobuf and requests, which only OTLP needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = config.otlp_endpoint or "http://127.0.0.1:4318/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint)
    raise ValueError(f"no exporter for tracing mode {config.mode!r}")


def use_provider(provider: TracerProvider | None) -> None:
    """Trace into ``provider`` (tests: an in-memory exporter); None turns tracing off."""
    with _State.lock:
        _install(provider)


def _install(provider: TracerProvider | None) -> None:
    _State.provider = provider
    _State.tracer = _NOOP_TRACER if provider is None else provider.get_tracer("agora")
    _State.enabled = provider is not None


def enabled() -> bool:
    return _State.enabled


def tracer() -> trace.Tracer:
    return _State.tracer


def shutdown() -> None:
    """Flush what is buffered (a process that stops on purpose)."""
    provider = _State.provider
    if provider is not None:
        provider.force_flush(2000)


# --- the file exporter -------------------------------------------------------------


class JsonLinesExporter(SpanExporter):
    """One compact JSON object per span, appended to ``path`` (rotated once at ``max_bytes``)."""

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                    self.path.replace(self.path.with_suffix(".jsonl.1"))
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def prune(directory: Path, keep_bytes: int = 512 * 1024 * 1024) -> list[Path]:
    """Delete the oldest trace files until those left total ``keep_bytes``; the deleted.

    Every process start opens a new file (service and pid in its name), so
    without this ``var/traces`` would only grow; ``agora up`` calls it.
    """
    files = sorted(directory.glob("*.jsonl*"), key=lambda p: p.stat().st_mtime, reverse=True)
    total, deleted = 0, []
    for path in files:
        total += path.stat().st_size
        if total > keep_bytes:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON shape of one span in ``var/traces``: ids in hex, times in Unix ns."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


# --- spans and propagation -------------------------------------------------------


def current_span() -> Span:
    return trace.get_current_span()


def recording() -> bool:
    """Whether a sampled span is current (else the helpers below do nothing)."""
    return _State.enabled and trace.get_current_span().is_recording()


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Sequence[trace.Link] | None = None,
) -> Iterator[Span]:
    """A span made current for the block; an exception marks it failed and is re-raised."""
    with _State.tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, links=links
    ) as current:
        yield current


@contextmanager
def child_span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span only inside a sampled trace; elsewhere the invalid span, at no cost."""
    if not recording():
        yield INVALID_SPAN
        return
    with span(name, kind=kind, attributes=attributes) as current:
        yield current


def carrier() -> dict[str, str] | None:
    """The current trace as a W3C carrier (``traceparent``), or None outside a sampled trace."""
    if not recording():
        return None
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out)
    return out


@contextmanager
def http_call(peer: str, method: str, url: str) -> Iterator[tuple[Span, dict[str, str]]]:
    """A client span for an outgoing HTTP call and the ``traceparent`` header naming it.

    Outside a sampled trace: the invalid span and no header. The span keeps the
    method, host and path only (no query, no header: they may carry secrets).
    """
    if not recording():
        yield INVALID_SPAN, {}
        return
    parts = urlsplit(url)
    attributes = {
        "http.request.method": method.upper(),
        "server.address": parts.hostname or "",
        "url.path": parts.path,
        "agora.peer": peer,
    }
    with span(
        f"{peer} {method.upper()} {parts.path}", kind=SpanKind.CLIENT, attributes=attributes
    ) as current:
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        yield current, headers


def outgoing_headers() -> dict[str, str]:
    """Headers for an outgoing HTTP call: ``traceparent`` inside a sampled trace, else none."""
    return carrier() or {}


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The context a carrier (or incoming headers) names; empty when it names none."""
    return _PROPAGATOR.extract(dict(headers or {}))


def extract_asgi(raw_headers: Sequence[tuple[bytes, bytes]]) -> otel_context.Context:
    """The context of an ASGI request's ``traceparent``/``tracestate`` headers."""
    found = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in raw_headers
        if key in (b"traceparent", b"tracestate")
    }
    return _PROPAGATOR.extract(found) if found else otel_context.Context()


def trace_id_hex(current: Span | None = None) -> str | None:
    ctx = (current or trace.get_current_span()).get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def traceparent(current: Span) -> str | None:
    """The W3C ``traceparent`` value naming ``current``."""
    ctx = current.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def remote_context(trace_id: str | None, span_id: str | None) -> otel_context.Context | None:
    """The context of a span recorded elsewhere (an event's producer), or None if malformed."""
    try:
        tid, sid = int(trace_id or "", 16), int(span_id or "", 16)
    except ValueError:
        return None
    ctx = SpanContext(tid, sid, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    if not ctx.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx))


# --- events: the envelope carries the trace through the outbox ----------------------


def stamp(events: list[Any]) -> list[Any]:
    """``events`` (envelopes) with the current trace and span set where they have none."""
    if not events or not recording():
        return events
    ctx = trace.get_current_span().get_span_context()
    tid, sid = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    return [
        e if e.trace_id else msgspec.structs.replace(e, trace_id=tid, span_id=sid) for e in events
    ]


def event_context(envelope: Any) -> otel_context.Context | None:
    """The producer's context an envelope carries (None: the event was not traced)."""
    if not _State.enabled or not envelope.trace_id:
        return None
    return remote_context(envelope.trace_id, getattr(envelope, "span_id", None))


@contextmanager
def linked_span(
    name: str, events: Sequence[Any], *, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A new trace for work done on behalf of traced events (a write-behind batch).

    One batch commits the changes of many requests, so it is no request's child:
    it links to each producing span. No traced event: no span.
    """
    if not _State.enabled or not events:
        yield INVALID_SPAN
        return
    links: dict[tuple[str, str], trace.Link] = {}
    for event in events:
        if event.trace_id and event.span_id and (event.trace_id, event.span_id) not in links:
            parent = remote_context(event.trace_id, event.span_id)
            if parent is not None:
                ctx = trace.get_current_span(parent).get_span_context()
                links[(event.trace_id, event.span_id)] = trace.Link(ctx)
    if not links:
        yield INVALID_SPAN
        return
    with span(
        name,
        parent=otel_context.Context(),
        attributes=attributes,
        links=list(links.values())[:MAX_LINKS],
    ) as current:
        yield current


def record_span(
    name: str,
    parent: otel_context.Context,
    start_ns: int,
    end_ns: int,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """A span that already happened (timed by someone else), under ``parent``."""
    done = _State.tracer.start_span(
        name, context=parent, kind=kind, attributes=attributes, start_time=start_ns
    )
    if error:
        done.set_status(Status(StatusCode.ERROR, error))
    done.end(end_time=end_ns)


# --- PostgreSQL: asyncpg's query logger --------------------------------------------


def instrument_connection(conn: Any) -> None:
    """Record each query of ``conn`` as a span of the trace that ran it (tracing on only).

    asyncpg calls the logger after the query, in the caller's context (``call_soon``
    copies it), with the elapsed time; a query outside a sampled trace costs a check.
    Only the statement text is kept (parameters may hold personal data).
    """
    if _State.enabled:
        conn.add_query_logger(_query_logged)


def _query_logged(record: Any) -> None:
    if not recording():
        return
    end = time.time_ns()
    query = " ".join(str(record.query).split())
    error = record.exception
    record_span(
        f"postgresql {query.split(' ', 1)[0].upper()}",
        otel_context.get_current(),
        end - int(record.elapsed * 1e9),
        end,
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.query.text": query[:MAX_QUERY_CHARS]},
        error=None if error is None else type(error).__name__,
    )


def mask_email(value: str) -> str:
    """``a***@example.com``: enough to tell two users apart in a trace, not to mail one."""
    local, at, domain = value.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
