"""The SMTP mail sender the notifications consumer is given (``streams`` imports none of ours).

``SmtpSender("smtp://[user:pass@]host:port")`` sends with the standard library's
``smtplib`` in a worker thread; ``smtps://`` uses implicit TLS and
``?starttls=1`` upgrades a plain connection. It is a small frozen dataclass so
Ray can ship it to the notifications actor; its ``repr`` hides the password.
A 5xx refusal is a ``PermanentMailError`` (the mail is parked, not retried);
anything else (refused connection, 4xx, timeout) is retried by the caller.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from streams.consumers.notifications import PermanentMailError

TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SmtpSender:
    url: str = field(repr=False)
    timeout_s: float = TIMEOUT_S

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"SmtpSender({parts.scheme}://{parts.hostname}:{parts.port})"

    async def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> None:
        # SMTP wants CRLF line ends; smtplib leaves bytes as they are.
        wire = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._send, wire, sender, list(recipients))

    def _send(self, message: bytes, sender: str, recipients: list[str]) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("the SMTP URL must start with smtp:// or smtps://")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
        starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        client_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
        try:
            with client_class(host, port, timeout=self.timeout_s) as client:
                if starttls:
                    client.starttls()
                if parts.username:
                    client.login(unquote(parts.username), unquote(parts.password or ""))
                refused = client.sendmail(sender, recipients, message)
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise PermanentMailError(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(500 <= code < 600 for code in codes):
                raise PermanentMailError(f"recipients refused: {codes}") from exc
            raise
        if refused:
            raise PermanentMailError(f"recipients refused: {sorted(refused)}")
