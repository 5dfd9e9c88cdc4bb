"""Stripe-style webhook signatures: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The signed message is ``b"<t>." + body``, so a signature binds the exact body
bytes and the time it was sent; ``verify`` refuses stale or future timestamps
(replays) and accepts the header when any of its ``v1`` entries matches (a
sender rotating secrets signs with both). Pure functions; time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re

HEADER = "Agora-Signature"
MAX_HEADER = 4096
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def _mac(secret: bytes, payload: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def sign(secret: bytes, payload: bytes, timestamp: int) -> str:
    """The signature header value for ``payload`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, payload, timestamp)}"


def _parse(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if name == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return None
            timestamp = int(value)
        elif name == "v1":
            if not _SIGNATURE.fullmatch(value):
                return None
            signatures.append(value)
        # Other schemes (v0, a future v2) are ignored, as Stripe does.
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify(
    secret: bytes, header: str | None, payload: bytes, now: int, tolerance_s: int = 300
) -> bool:
    """Whether ``header`` signs ``payload`` with ``secret`` within ``tolerance_s`` of ``now``."""
    if not isinstance(header, str) or not header or len(header) > MAX_HEADER:
        return False
    parsed = _parse(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, payload, timestamp)
    matches = [hmac.compare_digest(expected, candidate) for candidate in signatures]
    return any(matches)
