"""Structured JSON logs for the API, with secrets kept out.

``install()`` gives the ``agora`` loggers one JSON-lines handler on the process's
stderr (Ray keeps each replica's in ``worker-*.err`` under its session's logs).
Every record renders as one JSON object: ``ts``, ``level``, ``logger``, ``msg`` and
the record's extra fields.

Guard (serve.middleware) writes one ``agora.access`` line per request:
``request_id`` (the client's ``X-Request-ID`` when it is a plain token, else a new
one; echoed in the response), ``method``, ``route`` (the route template, never the
raw path or the query string, which may carry tokens), ``status``, ``ms``,
``client`` (the address the rate limit uses) and ``user`` (the authenticated user
id when the auth dependency recorded one in ``request.state.user_id``).

``redact`` is applied to every rendered string: JWTs and bearer tokens become
``[token]``, ``password=...``/``"password": ...`` values become ``[redacted]``,
and e-mail addresses are masked (``a***@example.com``). Request bodies and
headers are never logged.
"""

import json
import logging
import re
import sys
import time
from typing import Any

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/-]+=*")
_SECRET_FIELD = re.compile(
    r"(?i)(\"?(?:password|passwd|secret|token|refresh_token|access_token|api_key|totp)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\"'&\s,}]+)"
)
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def mask_email(email: str) -> str:
    """``ana.souza@example.com`` -> ``a***@example.com``."""
    return _EMAIL.sub(r"\1***@\2", email)


def redact(text: str) -> str:
    text = _JWT.sub("[token]", text)
    text = _BEARER.sub(r"\1 [token]", text)
    text = _SECRET_FIELD.sub(r"\1[redacted]", text)
    return mask_email(text)


# Extra fields whose values we build ourselves from checked parts (a validated request
# id, a route template, an IP address, a user id): not worth four regexes per request.
SAFE_FIELDS = frozenset(
    {"ts", "level", "logger", "request_id", "method", "route", "client", "user"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, every other string value redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(
            {
                k: redact(v) if isinstance(v, str) and k not in SAFE_FIELDS else v
                for k, v in entry.items()
            },
            default=str,
            ensure_ascii=False,
        )


_installed = False


def install(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the ``agora`` loggers (idempotent)."""
    global _installed
    if _installed:
        return
    # The process's real stderr: in a replica, Serve's throughput mode swaps sys.stderr
    # for a logger that drops INFO; fd 2 is the worker's .err file under Ray's logs.
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("agora")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _installed = True
