"""The embedded Pix PSP sandbox: charges with BR Codes, a "pay" button, signed webhooks.

Nobody can run the Brazilian instant-payment system locally, so this small
aiohttp server plays the PSP, on 127.0.0.1 only:

- ``POST /v1/charges`` ``{txid, amount, expires_at, webhook_url, pix_key?}``
  creates a pending charge with its BR Code (201); the same txid answers the
  charge it already has (200), or 409 if the amount or key differ.
- ``GET /v1/charges/{txid}`` answers the charge (``pending``, ``paid`` or
  ``expired``).
- ``POST /v1/charges/{txid}/pay`` is what a bank app does: a pending charge
  that has not expired becomes ``paid`` and a ``pix.paid`` webhook, signed
  like Stripe's (``Agora-Signature``), is POSTed to its ``webhook_url``; a
  non-2xx answer or an unreachable receiver is retried 5 times with
  exponential backoff. Expired: 409; already paid: 409; unknown: 404.

Charges are kept in a JSON file (written atomically on every change), so a
restart keeps them. The webhook secret is ``AGORA_PIX_WEBHOOK_SECRET`` when
set, else the hex key in ``--secret-file``; it is never logged.

Run by ``cluster.infra.start_pix_sandbox``:
``python -m cluster.pix_sandbox --port 8480 --secret-file var/run/pix_webhook_secret
--state var/pix/charges.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from cluster.adapters.pix import br_code
from cluster.adapters.webhooks import HEADER, sign

log = logging.getLogger("pix_sandbox")

WEBHOOK_RETRIES = 5
_TXID = re.compile(r"[A-Za-z0-9]{1,25}")
_MAX_AMOUNT = 10**12
_MAX_URL = 2048
_MAX_KEY = 77


class Sandbox:
    """The charges, their file, and webhook delivery."""

    def __init__(
        self,
        state: Path,
        secret: bytes,
        merchant_name: str,
        merchant_city: str,
        default_key: str,
        *,
        retry_base_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._secret = secret
        self._name = merchant_name
        self._city = merchant_city
        self._default_key = default_key
        self._retry_base_s = retry_base_s
        self._clock = clock
        self._http: ClientSession | None = None
        self.charges: dict[str, dict[str, Any]] = {}
        if state.exists():
            self.charges = json.loads(state.read_text())

    def _save(self) -> None:
        tmp = self._state.with_name(self._state.name + ".tmp")
        tmp.write_text(json.dumps(self.charges, indent=1, sort_keys=True))
        os.replace(tmp, self._state)

    def _view(self, charge: dict[str, Any]) -> dict[str, Any]:
        status = charge["status"]
        if status == "pending" and self._clock() >= charge["expires_at"]:
            status = "expired"
        return {
            "txid": charge["txid"],
            "br_code": charge["br_code"],
            "amount": charge["amount"],
            "expires_at": charge["expires_at"],
            "status": status,
            "paid_at": charge.get("paid_at"),
        }

    # --- routes ---------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body must be a JSON object")
        problem = _invalid_charge(body)
        if problem:
            return _error(400, problem)
        txid = body["txid"]
        pix_key = body.get("pix_key") or self._default_key
        existing = self.charges.get(txid)
        if existing is not None:
            if (existing["amount"], existing["pix_key"]) != (body["amount"], pix_key):
                return _error(409, "txid already used for another amount or key")
            return web.json_response(self._view(existing), status=200)
        try:
            code = br_code(pix_key, self._name, self._city, body["amount"], txid)
        except ValueError as exc:
            return _error(400, str(exc))
        charge = {
            "txid": txid,
            "br_code": code,
            "amount": body["amount"],
            "expires_at": body["expires_at"],
            "webhook_url": body["webhook_url"],
            "pix_key": pix_key,
            "status": "pending",
            "created_at": int(self._clock()),
        }
        self.charges[txid] = charge
        self._save()
        log.info("charge %s created: %s centavos", txid, charge["amount"])
        return web.json_response(self._view(charge), status=201)

    async def get(self, request: web.Request) -> web.Response:
        charge = self.charges.get(request.match_info["txid"])
        if charge is None:
            return _error(404, "no such charge")
        return web.json_response(self._view(charge))

    async def pay(self, request: web.Request) -> web.Response:
        charge = self.charges.get(request.match_info["txid"])
        if charge is None:
            return _error(404, "no such charge")
        status = self._view(charge)["status"]
        if status != "pending":
            return _error(409, f"charge is {status}")
        # No await between the check and the update: a concurrent pay sees "paid".
        charge["status"] = "paid"
        charge["paid_at"] = int(self._clock())
        self._save()
        log.info("charge %s paid", charge["txid"])
        webhook_status = await self._deliver(charge)
        charge["webhook_status"] = webhook_status
        self._save()
        return web.json_response({"status": "paid", "webhook_status": webhook_status})

    # --- webhooks ---------------------------------------------------------------

    async def _deliver(self, charge: dict[str, Any]) -> int | None:
        event = {
            "type": "pix.paid",
            "txid": charge["txid"],
            "amount": charge["amount"],
            "paid_at": charge["paid_at"],
        }
        payload = json.dumps(event, separators=(",", ":")).encode()
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=5))
        last: int | None = None
        for attempt in range(WEBHOOK_RETRIES + 1):
            if attempt:
                await asyncio.sleep(self._retry_base_s * 2 ** (attempt - 1))
            headers = {
                "Content-Type": "application/json",
                HEADER: sign(self._secret, payload, int(self._clock())),
            }
            try:
                async with self._http.post(
                    charge["webhook_url"], data=payload, headers=headers
                ) as reply:
                    last = reply.status
            except (ClientError, TimeoutError) as exc:
                log.warning("webhook %s attempt %d: %s", charge["txid"], attempt + 1, exc)
                continue
            if 200 <= last < 300:
                break
            log.warning("webhook %s attempt %d: http %d", charge["txid"], attempt + 1, last)
        log.info("webhook %s delivered: %s", charge["txid"], last)
        return last

    async def close(self, _app: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/charges", self.create)
        app.router.add_get("/v1/charges/{txid}", self.get)
        app.router.add_post("/v1/charges/{txid}/pay", self.pay)
        app.on_cleanup.append(self.close)
        return app


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid_charge(body: object) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    txid = body.get("txid")
    if not isinstance(txid, str) or not _TXID.fullmatch(txid):
        return "txid must be 1..25 characters of [A-Za-z0-9]"
    amount = body.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= _MAX_AMOUNT:
        return "amount must be a positive integer of centavos"
    if not _is_int(body.get("expires_at")) or body["expires_at"] <= 0:
        return "expires_at must be a Unix time in seconds"
    url = body.get("webhook_url")
    if not isinstance(url, str) or len(url) > _MAX_URL:
        return "webhook_url must be an http(s) URL"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhook_url must be an http(s) URL"
    key = body.get("pix_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY):
        return f"pix_key must be a string of 1..{_MAX_KEY} characters"
    return None


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)


def load_secret(path: Path) -> bytes:
    configured = os.environ.get("AGORA_PIX_WEBHOOK_SECRET")
    if configured:
        return configured.encode()
    return bytes.fromhex(path.read_text().strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.pix_sandbox")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True, help="file that keeps the charges")
    parser.add_argument("--merchant-name", default="Agora")
    parser.add_argument("--merchant-city", default="Sao Paulo")
    parser.add_argument("--pix-key", default="pix@agora.example", help="when a charge has none")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sandbox = Sandbox(
        args.state,
        load_secret(args.secret_file),
        args.merchant_name,
        args.merchant_city,
        args.pix_key,
    )
    web.run_app(sandbox.app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
