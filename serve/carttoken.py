"""Anonymous cart tokens: random, signed by us, and never stored in clear.

A token is ``<32 random bytes>.<HMAC-SHA256 tag>`` (base64url). The cart id is
derived from a hash of the token, so the database alone cannot reveal a
shopper's token, and a forged or guessed token is refused before any actor
is touched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_FORMAT = re.compile(r"^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{22}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CartTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("cart token secret must be at least 32 bytes")
        self._secret = secret

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:16])

    def issue(self) -> str:
        body = _b64(secrets.token_bytes(32))
        return f"{body}.{self._tag(body)}"

    def cart_id(self, token: str) -> str | None:
        """The cart id a valid token names, or ``None`` for a malformed or forged one."""
        if not _FORMAT.match(token):
            return None
        body, tag = token.split(".")
        if not hmac.compare_digest(tag, self._tag(body)):
            return None
        return "anon:" + hashlib.sha256(token.encode()).hexdigest()[:40]
