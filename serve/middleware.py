"""ASGI middleware of the API: the edge checks every request passes before a route runs.

Body size limit; no control characters in the path, the query or a header
(PostgreSQL refuses NUL, and nothing else needs them); the per-client-IP API
rate limit; security headers on every response (``security_headers``); a
server-side deadline (``request_deadline_s``: a request still unanswered then
gets a 503 problem with Retry-After, so a stalled dependency never holds
clients forever); request metrics; with tracing on, a server span per request
(honouring an incoming ``traceparent``) and ``X-Trace-Id`` on the response.

No ``from __future__ import annotations``: kept like the routers for uniformity.
"""

import asyncio
import functools
import ipaddress
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from ray.serve.context import _get_serve_request_context
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from serve import logs, problems
from serve.ratelimit import LeasedLimiter, Limit, client_ip, lease_units, trusted_networks
from serve.runtime import runtime
from streams import tracing

REQUESTS = Counter("agora_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "agora_http_request_seconds",
    "HTTP request latency inside the API replica",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@functools.lru_cache(maxsize=4)
def _networks(specs: tuple[str, ...]) -> frozenset[Any]:
    return trusted_networks(specs)


def request_ip(request: Request) -> str:
    """The client address: the direct peer, or the trusted proxy header from a trusted peer."""
    s = runtime().settings
    host = request.client.host if request.client else None
    return client_ip(
        host, request.headers, s.trusted_proxy_header, _networks(tuple(s.trusted_proxies))
    )


SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def _over_tls(scope: dict[str, Any]) -> bool:
    """HTTPS to us: TLS on this hop, or X-Forwarded-Proto https from a trusted proxy."""
    if scope.get("scheme") == "https":
        return True
    peer = (scope.get("client") or ("",))[0]
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if not any(address in n for n in _networks(tuple(runtime().settings.trusted_proxies))):
        return False
    for key, value in scope.get("headers", []):
        if key == b"x-forwarded-proto":
            return bool(value.strip().lower() == b"https")
    return False


def security_headers(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Headers every response carries; HSTS only over TLS (or with AGORA_FORCE_HSTS)."""
    headers = list(SECURITY_HEADERS)
    s = runtime().settings
    if s.force_hsts or _over_tls(scope):
        value = f"max-age={s.hsts_max_age_s}; includeSubDomains"
        headers.append((b"strict-transport-security", value.encode()))
    return headers


ACCESS = logging.getLogger("agora.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def serve_request_id() -> str:
    """The id Ray Serve gave this request ("" outside a replica); Serve echoes it itself."""
    try:
        return str(_get_serve_request_context().request_id or "")
    except Exception:
        return ""


def request_id(scope: dict[str, Any]) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one."""
    for key, value in scope.get("headers", []):
        if key == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def _with_security_headers(scope: dict[str, Any], send: Any, rid: str | None) -> Any:
    """``send`` that adds the security headers (and X-Request-ID) a response does not set."""
    extra = security_headers(scope)
    if rid is not None:
        extra.append((b"x-request-id", rid.encode()))

    async def send_secured(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            present = {key.lower() for key, _ in message.get("headers", [])}
            added = [(k, v) for k, v in extra if k not in present]
            if added:
                message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return send_secured


MAX_BODY = 64 * 1024
# Image uploads (serve/routers/media.py) may carry media_max_bytes plus the multipart framing.
_UPLOAD_PATH = re.compile(r"^/v1/admin/products/[^/]+/images$")


def body_limit(scope: dict[str, Any]) -> int:
    """The most body bytes this request may send."""
    if scope.get("method") == "POST" and _UPLOAD_PATH.match(scope.get("path", "")):
        return runtime().settings.media_max_bytes + 64 * 1024
    return MAX_BODY


_UNSAFE_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def unsafe_part(scope: dict[str, Any]) -> str | None:
    """Where a control character hides in the path, the query or a header (None: nowhere)."""
    if _UNSAFE_PATH.search(scope.get("path", "")):
        return "path"
    if _UNSAFE_BYTES.search(unquote_to_bytes(scope.get("query_string", b""))):
        return "query"
    for key, value in scope.get("headers", []):
        if _UNSAFE_BYTES.search(value):
            return f"header.{key.decode('latin-1')}"
    return None


class Guard:
    """Pure ASGI middleware: body size limit and request metrics."""

    def __init__(self, app: Any) -> None:
        self.app = app
        logs.install()
        ACCESS.setLevel(logging.INFO if runtime().settings.access_log else logging.WARNING)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if tracing.enabled():
            await _traced(self._guarded, scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Under Serve, Serve's request id (the client's X-Request-ID when it sent one),
        # which Serve puts on the response itself; elsewhere our own.
        serve_rid = serve_request_id()
        rid = serve_rid or request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        send = _with_security_headers(scope, send, None if serve_rid else rid)
        limit = body_limit(scope)
        for key, value in scope.get("headers", []):
            if key == b"content-length" and (not value.isdigit() or int(value) > limit):
                response = problems.problem_response(
                    413, None, f"Request bodies are limited to {limit} bytes."
                )
                await response(scope, receive, send)
                return
        where = unsafe_part(scope)
        if where is not None:
            response = problems.problem_response(
                422,
                "validation",
                "The request has invalid fields.",
                errors=[{"field": where, "message": "must not contain control characters"}],
            )
            await response(scope, receive, send)
            return
        if scope["path"].startswith("/v1/") and not await _within_api_limit(scope):
            return await _too_many(scope, receive, send)
        start = time.perf_counter()
        status = 500
        started = late = False
        received = 0

        async def counted_receive() -> dict[str, Any]:
            """Count body bytes too: a chunked upload has no Content-Length to check."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(
                        413, f"Request bodies are limited to {limit} bytes."
                    )
            return dict(message)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, started
            if late:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        # The route runs in its own task: past the deadline we answer at once and
        # cancel it without waiting, since unwinding may itself wait on the stalled
        # dependency (asyncpg shields a connection's release).
        work = asyncio.ensure_future(self.app(scope, counted_receive, send_wrapper))
        try:
            done, _pending = await asyncio.wait(
                {work}, timeout=runtime().settings.request_deadline_s
            )
            if work in done:
                work.result()
                return
            late = True
            work.cancel()
            work.add_done_callback(_forget)
            if started:
                return
            status = 503
            response = problems.problem_response(
                503,
                "unavailable",
                "The request took too long on our side; retry shortly.",
                {"Retry-After": str(problems.RETRY_AFTER_S)},
            )
            await response(scope, receive, send)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            took = time.perf_counter() - start
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(path).observe(took)
            if ACCESS.isEnabledFor(logging.INFO):
                _access_log(scope, rid, path, status, took)


async def _traced(guarded: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Run the request in a server span (child of an incoming W3C ``traceparent``).

    The response names the trace in ``X-Trace-Id``. Attributes: method, path,
    route, status and request id; never a header, the query string or a body.
    """
    status = 500
    with tracing.span(
        f"{scope['method']} {scope['path']}",
        kind=SpanKind.SERVER,
        parent=tracing.extract_asgi(scope.get("headers", [])),
        attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
    ) as current:
        trace_id = tracing.trace_id_hex(current)
        header = [(b"x-trace-id", trace_id.encode())] if trace_id else []

        async def send_traced(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *header]}
            await send(message)

        try:
            await guarded(scope, receive, send_traced)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route:
                current.update_name(f"{scope['method']} {route}")
                current.set_attribute("http.route", route)
            current.set_attribute("http.response.status_code", status)
            rid = scope.get("state", {}).get("request_id")
            if rid:
                current.set_attribute("agora.request_id", rid)
            if status >= 500:
                current.set_status(Status(StatusCode.ERROR))


def _access_log(scope: dict[str, Any], rid: str, route: str, status: int, took: float) -> None:
    """One structured line per request (serve.logs renders and redacts it)."""
    state = scope.get("state", {})
    ACCESS.info(
        "request",
        extra={
            "request_id": rid,
            "method": scope["method"],
            "route": route,
            "status": status,
            "ms": round(took * 1000, 2),
            "client": state.get("client_ip") or request_ip(Request(scope)),
            "user": state.get("user_id"),
        },
    )


def _forget(work: "asyncio.Future[None]") -> None:
    """Retrieve a cancelled late route's outcome so it is not reported as never retrieved."""
    if not work.cancelled():
        work.exception()


_api_leases: LeasedLimiter | None = None


def _api_limiter(limiter: Any, s: Any) -> LeasedLimiter:
    """This replica's leased per-IP API limit (rebuilt if the runtime's limiter changes)."""
    global _api_leases
    if _api_leases is None or _api_leases.limiter is not limiter:
        limit = Limit("api-ip", s.api_requests_per_ip, s.api_requests_period_s)
        units = lease_units(limit.limit, s.api_lease_max_units)
        _api_leases = LeasedLimiter(limiter, limit, units=units, lease_s=s.api_lease_s)
    return _api_leases


async def _within_api_limit(scope: dict[str, Any]) -> bool:
    """The global per-client-IP limit, spent from a local lease; fails open if Redis is down."""
    rt = runtime()
    if rt.limiter is None:
        try:
            await rt.ready()
        except Exception:
            return True
    try:
        ip = request_ip(Request(scope))
        scope.setdefault("state", {})["client_ip"] = ip
        decision = await _api_limiter(rt.limiter, rt.settings).hit(ip)
    except Exception:
        return True
    scope.setdefault("state", {})["retry_after"] = decision.retry_after_s
    return bool(decision.allowed)


async def _too_many(scope: dict[str, Any], receive: Any, send: Any) -> None:
    retry = str(scope.get("state", {}).get("retry_after", 1))
    response = problems.problem_response(
        429, "rate-limited", "Too many requests from this address.", {"Retry-After": retry}
    )
    await response(scope, receive, send)
