"""A 503 tells the client only "retry"; the replica's log says which dependency failed,
by exception class only (messages may carry data such as a DSN or a key)."""

import logging

import redis.exceptions
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve import problems


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.get("/redis")
    async def slow_redis() -> None:
        raise redis.exceptions.TimeoutError("Timeout reading from redis://:hunter2@cache")

    @app.get("/wrapped")
    async def wrapped() -> None:
        try:
            raise ConnectionRefusedError("postgresql://agora:hunter2@db")
        except ConnectionRefusedError as exc:
            raise RuntimeError("the pool gave up") from exc

    @app.get("/bug")
    async def bug() -> None:
        raise ValueError("hunter2")

    @app.get("/plain")
    async def plain() -> None:
        raise TimeoutError("hunter2")

    return app


def test_a_503_logs_the_failing_dependency_by_class_only(caplog):
    caplog.set_level(logging.WARNING, logger="agora.problems")
    with TestClient(_app(), raise_server_exceptions=False) as http:
        first = http.get("/redis")
        second = http.get("/plain")
        third = http.get("/wrapped")
    assert first.status_code == second.status_code == third.status_code == 503
    assert first.headers["retry-after"] == str(problems.RETRY_AFTER_S)
    lines = [r.getMessage() for r in caplog.records if r.name == "agora.problems"]
    assert lines == [
        "503 on GET /redis: TimeoutError",
        "503 on GET /plain: TimeoutError",
        "503 on GET /wrapped: RuntimeError <- ConnectionRefusedError",
    ]
    assert "hunter2" not in caplog.text


def test_the_chain_of_causes_is_named_in_order():
    try:
        try:
            raise ConnectionRefusedError("secret")
        except ConnectionRefusedError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as exc:
        assert problems.causes(exc) == "RuntimeError <- ConnectionRefusedError"
    assert problems.causes(None) == ""


def test_a_bug_is_a_500_and_not_logged_as_a_dependency(caplog):
    caplog.set_level(logging.WARNING, logger="agora.problems")
    with TestClient(_app(), raise_server_exceptions=False) as http:
        reply = http.get("/bug")
    assert reply.status_code == 500
    assert not [r for r in caplog.records if r.name == "agora.problems"]
