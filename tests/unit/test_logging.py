"""Structured JSON logs: one access line per request with request id, client address and
user; passwords, tokens and e-mail addresses never appear as they are."""

import io
import json
import logging

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve import logs, problems
from serve.middleware import Guard

PASSWORD = "Corr3ct-Horse-Battery-9"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIwMTkyIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
EMAIL = "ana.souza@example.com"


@pytest.fixture()
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    agora = logging.getLogger("agora")
    agora.addHandler(handler)
    old_level = agora.level
    agora.setLevel(logging.INFO)
    yield stream
    agora.removeHandler(handler)
    agora.setLevel(old_level)


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(Guard)
    careless = logging.getLogger("agora.test")

    @app.post("/auth/token/{kind}")
    async def token(kind: str, request: Request) -> dict[str, str]:
        form = await request.form()
        # The worst a route could do: log what it was given and what it answers.
        careless.warning(
            "login username=%s password=%s -> access_token=%s",
            form["username"],
            form["password"],
            TOKEN,
        )
        careless.info("raw", extra={"body": f'{{"password": "{PASSWORD}"}}'})
        request.state.user_id = "0192f0c1-user"
        return {"access_token": TOKEN}

    return app


def test_a_login_leaves_no_password_token_or_email_in_the_logs(captured):
    with TestClient(_app()) as http:
        reply = http.post(
            "/auth/token/password?trace=1",
            data={"username": EMAIL, "password": PASSWORD},
            headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "req-42"},
        )
    assert reply.status_code == 200 and reply.json()["access_token"] == TOKEN
    assert reply.headers["x-request-id"] == "req-42"
    text = captured.getvalue()
    assert PASSWORD not in text and TOKEN not in text and EMAIL not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    careless = lines[0]
    assert (
        careless["msg"]
        == "login username=a***@example.com password=[redacted] -> access_token=[redacted]"
    )
    access = lines[-1]
    assert access["logger"] == "agora.access" and access["msg"] == "request"
    assert access["request_id"] == "req-42"
    assert access["route"] == "/auth/token/{kind}"  # the template: no path values, no query
    assert access["status"] == 200 and access["method"] == "POST"
    assert access["client"] == "testclient" or access["client"] == "unknown"
    assert access["user"] == "0192f0c1-user"
    assert access["ms"] >= 0


def test_a_request_id_that_is_not_a_plain_token_is_replaced(captured):
    with TestClient(_app()) as http:
        reply = http.post(
            "/auth/token/x",
            data={"username": "u", "password": "p"},
            headers={"X-Request-ID": "evil\tinjected " + "x" * 80},
        )
    rid = reply.headers["x-request-id"]
    assert len(rid) == 32 and rid.isalnum()
    assert json.loads(captured.getvalue().splitlines()[-1])["request_id"] == rid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2&x=1", "password=[redacted]&x=1"),
        ('{"refresh_token": "abc.def"}', '{"refresh_token": "[redacted]"}'),
        ("Authorization: Bearer abc123", "Authorization: Bearer [token]"),
        ("user joao@mail.com.br", "user j***@mail.com.br"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(text, expected):
    assert logs.redact(text) == expected
