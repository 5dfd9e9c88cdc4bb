"""TLS at the edge against a real HAProxy: the rewritten frontend terminates TLS with a
self-signed certificate made in the test and tells the backend the scheme was https (the
API sends HSTS on that: tests/unit/test_edges_hardening.py). No Ray needed: the backend is
a small echo server standing in for a Serve replica."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cluster import haproxy_edge, infra
from cluster.settings import Settings
from tests.unit.test_tls_edge import MINIMAL, self_signed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("haproxy", path="/usr/sbin"), reason="no haproxy"),
]


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def test_haproxy_terminates_tls_and_forwards_the_scheme(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    pem = infra.write_tls_pem(Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=key))
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    plain, tls = _port(), _port()
    config, _ = haproxy_edge.rewrite(
        MINIMAL.format(plain=plain, backend=backend.server_address[1]),
        tls=(f"127.0.0.1:{tls}", str(pem)),
    )
    (tmp_path / "haproxy.cfg").write_text(config)
    proxy = subprocess.Popen(
        ["/usr/sbin/haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(tls)
        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(
            f"https://localhost:{tls}/v1/products", context=trusted, timeout=10
        ) as reply:
            seen = json.loads(reply.read())
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{plain}/", timeout=10) as reply:
            assert json.loads(reply.read())["x-forwarded-proto"] == "http"
        # A client that checks certificates refuses one it was not told to trust.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://localhost:{tls}/", context=ssl.create_default_context(), timeout=10
            )
    finally:
        proxy.terminate()
        proxy.wait(10)
        backend.shutdown()
