"""RFC 9457 problem+json: one response shape for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.clients import ShardMoved
from actors.messages import Rejected
from actors.shard import HandoffPending

LOG = logging.getLogger("agora.problems")
PROBLEM_BASE = "https://agora.example/problems/"
MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
_TYPES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


class Problem(Exception):
    """Raise to answer with a problem; ``kind`` becomes the stable ``type`` suffix."""

    def __init__(
        self,
        status: int,
        kind: str | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or kind)
        self.status = status
        self.kind = kind or _TYPES.get(status, "error")
        self.detail = detail
        self.headers = headers
        self.extra = extra


# The one map from a rejection ``code`` (``actors.messages.Rejected``) to its HTTP
# status, for the whole API. A code not listed here is a 422.
STATUS: dict[str, int] = {
    # carts
    "not-in-cart": 404,
    "quantity-limit": 422,
    "cart-full": 422,
    "invalid-coupon-code": 422,
    # stock
    "unknown-sku": 404,
    "below-reserved": 409,
    "insufficient": 409,
    "out-of-stock": 409,
    # orders and payments
    "not-found": 404,
    "idempotency-mismatch": 422,
    "not-cancellable": 409,
    "wrong-status": 409,
    "payment-declined": 402,
    "fraud-blocked": 403,
    "empty-cart": 422,
    "reservation-expired": 409,
    "payment-expired": 409,
    "idempotency-key-reused": 422,
    "amount-mismatch": 422,
    "unknown-reservation": 409,
    "coupon-exhausted": 422,
    "coupon-user-limit": 422,
    "pricing-unavailable": 503,
    "fraud-unavailable": 503,
    "stock-unavailable": 503,
    "coupon-unavailable": 503,
    "payment-unavailable": 503,
}


# What a dependency that is down or too slow raises (PostgreSQL, Redis, a socket, a
# pool or call timeout): the API answers 503 with Retry-After, never 500.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ShardMoved,  # a key still being handed over by ``agora scale`` (actors.clients)
    HandoffPending,
)
RETRY_AFTER_S = 5


def is_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) means a dependency is down, not a bug."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, UNAVAILABLE):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def causes(exc: BaseException | None) -> str:
    """The class names of ``exc`` and what caused it (no messages: they may hold data)."""
    names: list[str] = []
    while exc is not None and len(names) < 8:
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(names)


def unavailable(detail: str = "A service we depend on is unavailable; retry shortly.") -> Problem:
    """A 503 telling the client when to retry."""
    return Problem(503, "unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def rejected(rejection: Rejected, **extra: Any) -> Problem:
    """The problem that answers a rejected command: its code is the problem type."""
    status = STATUS.get(rejection.code, 422)
    return Problem(status, rejection.code, rejection.detail, **extra)


def rate_limited(detail: str, retry_after_s: int) -> Problem:
    """A 429 telling the client when to come back."""
    return Problem(429, "rate-limited", detail, headers={"Retry-After": str(max(1, retry_after_s))})


def problem_response(
    status: int,
    kind: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (kind or _TYPES.get(status, "error")),
        "title": _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        where, rest = parts[0], parts[1:]
        return f"{where}.{'.'.join(rest)}" if rest else where
    return ".".join(parts)


def install(app: FastAPI) -> None:
    """Route every error (ours, FastAPI's, Starlette's, unexpected) through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.kind, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(400, "malformed-json", "The request body is not valid JSON.")
        fields = [
            {"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in errors
        ]
        return problem_response(422, "validation", "The request has invalid fields.", errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 500 else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = "No such resource."
        if exc.status_code == 405:
            detail = "This method is not allowed on this resource."
        return problem_response(exc.status_code, None, detail, getattr(exc, "headers", None))

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        _log_unavailable(request, exc)
        return await _problem(request, unavailable())

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_unavailable(exc):
            _log_unavailable(request, exc)
            return await _problem(request, unavailable())
        return problem_response(500, "internal", "Something went wrong on our side.")


def _log_unavailable(request: Request, exc: BaseException) -> None:
    """Say which dependency failed a request with a 503 (the client only sees "retry")."""
    route = getattr(request.scope.get("route"), "path", "unmatched")
    LOG.warning("503 on %s %s: %s", request.method, route, causes(exc))


async def actor_call(ref: Any, what: str = "This service") -> Any:
    """Await an actor call; a dead or restarting actor becomes a 503 with Retry-After."""
    from ray.exceptions import RayActorError

    try:
        return await ref
    except RayActorError as exc:
        problem = unavailable(f"{what} is restarting; retry shortly.")
        problem.headers = {"Retry-After": "1"}
        raise problem from exc
