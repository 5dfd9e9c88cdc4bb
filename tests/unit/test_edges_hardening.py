"""Hardened edges without a running system: the HAProxy config rewrite applied to Ray's own
template, and the security headers the API middleware adds to every response."""

import shutil
import subprocess
import sys
import types

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jinja2 import Environment
from ray.serve._private import haproxy as ray_haproxy
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE
from ray.serve.config import HTTPOptions

from cluster.haproxy_edge import rewrite
from serve import loopback, problems
from serve.middleware import Guard
from serve.runtime import runtime


def _ray_config(http_host: str = "127.0.0.1", **overrides) -> str:
    """The HAProxy config Ray 2.60 renders (no backends), as its HAProxyManager does."""
    cfg = ray_haproxy.HAProxyConfig(http_options=HTTPOptions(host=http_host), **overrides)
    env = Environment()
    env.filters["haproxy_fmt"] = ray_haproxy._haproxy_fmt_literal
    return env.from_string(HAPROXY_CONFIG_TEMPLATE).render(
        config=cfg,
        backends=[],
        grpc_backends=[],
        backends_with_health_config=[],
        grpc_backends_with_health_config=[],
        healthz_rules="",
        grpc_healthz_rules="",
        route_info=cfg.build_health_route_info([]),
        has_ingress_request_router=False,
        metrics_enabled=cfg.metrics_enabled,
        metrics_socket_path="/tmp/agora-test-metrics.sock",
    )


def _binds(config: str) -> list[str]:
    return [line.split()[1] for line in config.splitlines() if line.strip().startswith("bind ")]


def test_rays_template_still_has_what_the_rewrite_changes():
    binds = _binds(_ray_config())
    assert ":9101" in binds and "*:8404" in binds, binds


def test_side_ports_move_to_loopback_and_the_client_address_is_set():
    original = _ray_config()
    config, missing = rewrite(original)
    assert missing == []
    assert sorted(_binds(config)) == ["127.0.0.1:8000", "127.0.0.1:8404", "127.0.0.1:9101"]
    frontend = config.split("frontend http_frontend\n", 1)[1].split("\nbackend ", 1)[0]
    assert "http-request set-header X-Forwarded-For %[src]" in frontend
    assert "http-request del-header Forwarded" in frontend
    assert "set-header X-Forwarded-Proto http if !{ ssl_fc }" in frontend
    assert "mode 666" not in config and "mode 600 level admin" in config
    # Nothing else of Ray's config changes.
    assert len(config.splitlines()) == len(original.splitlines()) + 4


def test_the_http_bind_a_setting_chose_is_kept():
    config, _ = rewrite(_ray_config(http_host="0.0.0.0"))
    assert "*:8000" in _binds(config)
    config, _ = rewrite(_ray_config(), bind_host="0.0.0.0")
    assert {"0.0.0.0:8404", "0.0.0.0:9101"} <= set(_binds(config))


def test_a_changed_template_is_reported_not_half_applied():
    config, missing = rewrite("global\n    maxconn 10\n")
    assert config == "global\n    maxconn 10\n"
    assert set(missing) == {"side-port binds", "http_frontend"}


@pytest.mark.skipif(not shutil.which("haproxy", path="/usr/sbin"), reason="no haproxy here")
def test_haproxy_accepts_the_rewritten_config(tmp_path):
    config, _ = rewrite(_ray_config(socket_path=str(tmp_path / "admin.sock")))
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("errorfile", "# errorfile") + "\n")
    check = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(Guard)

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/framed")
    async def framed() -> dict[str, str]:
        raise ValueError("boom")

    return app


HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/ok", {}, 200),
        ("GET", "/missing", {}, 404),
        ("POST", "/ok", {}, 405),
        ("GET", "/ok?q=%00", {}, 422),
        ("POST", "/ok", {"content": b"x" * 70_000}, 413),
    ],
)
def test_every_response_carries_the_security_headers(method, path, kwargs, status):
    with TestClient(_app()) as http:
        reply = http.request(method, path, **kwargs)
    assert reply.status_code == status
    for name, value in HEADERS.items():
        assert reply.headers[name] == value, name
    assert "strict-transport-security" not in reply.headers


def test_hsts_over_tls_and_only_then(monkeypatch):
    with TestClient(_app(), base_url="https://testserver") as http:
        hsts = http.get("/ok").headers["strict-transport-security"]
    assert hsts == f"max-age={runtime().settings.hsts_max_age_s}; includeSubDomains"
    with TestClient(_app()) as http:
        # TestClient's peer ("testclient") is no trusted proxy: its claim is ignored.
        reply = http.get("/ok", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in reply.headers
    monkeypatch.setattr(runtime().settings, "force_hsts", True)
    with TestClient(_app()) as http:
        assert "strict-transport-security" in http.get("/ok").headers


def test_a_route_setting_its_own_header_keeps_it():
    app = _app()

    @app.get("/embeddable")
    async def embeddable():
        from fastapi.responses import JSONResponse

        return JSONResponse({}, headers={"X-Frame-Options": "SAMEORIGIN"})

    with TestClient(app) as http:
        reply = http.get("/embeddable")
    assert reply.headers.get_list("x-frame-options") == ["SAMEORIGIN"]


def test_replica_grpc_servers_are_moved_to_loopback(monkeypatch):
    assert loopback.loopback_address("[::]:0") == "127.0.0.1:0"
    assert loopback.loopback_address("0.0.0.0:7000") == "127.0.0.1:7000"
    assert loopback.loopback_address("10.0.0.5:0") == "10.0.0.5:0"
    bound: list[str] = []
    fake = types.SimpleNamespace(
        add_port_to_grpc_server=lambda server, address: bound.append(address)
    )
    monkeypatch.setitem(sys.modules, "ray.serve._private.replica", fake)
    assert loopback.apply() and loopback.apply()  # idempotent: wrapped once
    fake.add_port_to_grpc_server(None, "[::]:0")
    assert bound == ["127.0.0.1:0"]
    monkeypatch.setattr(runtime().settings, "ray_loopback_only", False)
    other = types.SimpleNamespace(add_port_to_grpc_server=lambda server, address: address)
    monkeypatch.setitem(sys.modules, "ray.serve._private.replica", other)
    assert not loopback.apply()
    assert other.add_port_to_grpc_server(None, "[::]:0") == "[::]:0"
