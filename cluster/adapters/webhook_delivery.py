"""Webhook deliveries over HTTP, and the SSRF guard on webhook URLs.

``refusal(url, allow_private)`` says why a URL may not be a webhook target
(None: acceptable): only ``http``/``https``, no credentials in the URL, and
every address the host resolves to must be public (not private, loopback,
link-local, multicast, reserved or unspecified) unless ``allow_private``
(``AGORA_WEBHOOKS_ALLOW_PRIVATE``, for local receivers and tests) is on.

``HttpPoster`` is what the webhooks actor is given: it re-checks the URL at
delivery time (DNS may have changed since registration), never follows
redirects, and gives up after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from streams.consumers.webhooks import PostResult

MAX_URL_LENGTH = 2000


async def refusal(url: str, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook target, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL with a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    if allow_private:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError:
        return "has a host that does not resolve"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            return "points at a private, loopback or reserved address"
    return None


@dataclass(frozen=True)
class HttpPoster:
    allow_private: bool = False
    timeout_s: float = 10.0

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        reason = await refusal(url, self.allow_private)
        if reason is not None:
            return PostResult(None, f"refused: the URL {reason}")
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body, headers=dict(headers), allow_redirects=False) as reply,
            ):
                await reply.read()
                return PostResult(reply.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return PostResult(None, f"{type(exc).__name__}: {exc}"[:300])
