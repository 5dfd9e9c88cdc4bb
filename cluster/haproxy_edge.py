"""Ray Serve's HAProxy, started through this shim: loopback-only side ports, real client address.

Ray 2.60 renders its HAProxy config from a fixed template
(``ray.serve._private.haproxy_templates``) with no setting for two things we need:

* the stats page (``listen stats``, ``bind *:8404``) and the Prometheus exporter
  (``frontend prometheus``, ``bind :9101``) listen on every interface;
* its admin socket is created mode 666 with ``level admin``;
* the ``http_frontend`` adds no forwarding header, so every request reaches the
  API replica from 127.0.0.1 and per-IP rate limits act store-wide.

``RAY_SERVE_HAPROXY_BINARY_PATH`` points at a small executable (written by
``cluster.infra.haproxy_shim``) that runs this file with HAProxy's arguments.
It rewrites the ``-f`` config into ``<config>.edge.cfg`` (``rewrite``) and
``exec``s the real binary with it, so HAProxy keeps the pid Ray tracks. In the
rewritten config the two side ports listen on ``EDGE_BIND_HOST`` (127.0.0.1 by
default), and the HTTP frontend *sets* ``X-Forwarded-For`` to the TCP peer
(``%[src]``) and ``X-Forwarded-Proto`` to the connection's scheme, replacing
anything a client sent, so the replica can trust both from its loopback peer
(``AGORA_TRUSTED_PROXY_HEADER``, the default; HSTS follows the scheme); the
admin socket becomes mode 600.
With ``AGORA_TLS_CERT`` / ``AGORA_TLS_KEY`` set, the HTTP frontend gets a second
bind, ``AGORA_TLS_PORT`` with ``ssl crt`` (cert and key joined into one PEM by
``cluster.infra``); the plain bind stays for Ray's own checks and local tools.
A template that no longer matches is run unchanged with a warning on stderr.

Standard library only: Ray runs this on every HAProxy (re)load.
"""

from __future__ import annotations

import os
import re
import sys

HAPROXY_ENV = "AGORA_HAPROXY_REAL_BINARY"
BIND_HOST_ENV = "AGORA_HAPROXY_SIDE_BIND_HOST"
TLS_BIND_ENV = "AGORA_HAPROXY_TLS_BIND"  # host:port of the TLS bind; unset: no TLS
TLS_PEM_ENV = "AGORA_HAPROXY_TLS_PEM"  # the certificate chain and key, one PEM file
FORWARDED_HEADER = "X-Forwarded-For"

# The sections whose bind lines move to ``bind_host`` (never the http_frontend: its
# host is AGORA_HTTP_HOST, which Ray renders as ``*`` for 0.0.0.0).
SIDE_SECTIONS = ("frontend prometheus", "listen stats")
_BIND = re.compile(r"^(\s*bind\s+)\S*:(\d+)(.*)$")
_ADMIN_SOCKET = re.compile(r"^(\s*stats socket \S+ mode )666", re.MULTILINE)
_HTTP_FRONTEND = re.compile(r"^(frontend http_frontend\n\s*bind [^\n]*\n)", re.MULTILINE)


def tls_bind_line(tls: tuple[str, str] | None) -> str:
    """The HTTP frontend's extra bind for ``(host:port, pem path)``; empty without TLS."""
    if tls is None:
        return ""
    address, pem = tls
    # HTTP/1.1 only: Ray's backends speak it, and ALPN h2 would need h2 to the replicas.
    return f"    bind {address} ssl crt {pem} alpn http/1.1\n"


def rewrite(
    config: str, bind_host: str = "127.0.0.1", tls: tuple[str, str] | None = None
) -> tuple[str, list[str]]:
    """The config with side ports on ``bind_host``, the client address forwarded, and a TLS
    bind when ``tls`` is ``(host:port, pem path)``.

    Returns the new text and what could not be applied (empty when all was).
    """
    missing = []
    lines, section, side_ports = config.split("\n"), "", 0
    for at, line in enumerate(lines):
        if line and not line[0].isspace():
            section = " ".join(line.split())
        elif section in SIDE_SECTIONS and (bind := _BIND.match(line)):
            lines[at] = f"{bind.group(1)}{bind_host}:{bind.group(2)}{bind.group(3)}"
            side_ports += 1
    config = "\n".join(lines)
    if side_ports < len(SIDE_SECTIONS):
        missing.append("side-port binds")
    # Ray's admin socket is world-writable (mode 666, level admin): owner only.
    config = _ADMIN_SOCKET.sub(r"\g<1>600", config)
    header = (
        f"    http-request set-header {FORWARDED_HEADER} %[src]\n"
        "    http-request del-header Forwarded\n"
        "    http-request set-header X-Forwarded-Proto https if { ssl_fc }\n"
        "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }\n"
    )
    extra = tls_bind_line(tls) + header
    config, frontends = _HTTP_FRONTEND.subn(lambda m: m.group(1) + extra, config, count=1)
    if frontends == 0:
        missing.append("http_frontend")
    return config, missing


def _with_edge_config(
    args: list[str], bind_host: str, tls: tuple[str, str] | None = None
) -> list[str]:
    if "-f" not in args:
        return args
    at = args.index("-f") + 1
    source = args[at]
    with open(source) as handle:
        text, missing = rewrite(handle.read(), bind_host, tls)
    if missing:
        print(f"haproxy_edge: template changed, not applied: {missing}", file=sys.stderr)
        return args
    target = f"{source}.edge.cfg"
    with open(target, "w") as handle:
        handle.write(text)
    return [*args[:at], target, *args[at + 1 :]]


def main() -> None:  # pragma: no cover - replaces this process with HAProxy
    binary = os.environ.get(HAPROXY_ENV, "/usr/sbin/haproxy")
    tls_bind, tls_pem = os.environ.get(TLS_BIND_ENV), os.environ.get(TLS_PEM_ENV)
    tls = (tls_bind, tls_pem) if tls_bind and tls_pem else None
    args = _with_edge_config(sys.argv[1:], os.environ.get(BIND_HOST_ENV, "127.0.0.1"), tls)
    os.execv(binary, [binary, *args])  # noqa: S606 - becomes HAProxy, as Ray asked for


if __name__ == "__main__":
    main()
