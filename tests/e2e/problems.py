"""Assertions every e2e test uses on problem+json answers."""

import httpx

PROBLEM = "application/problem+json"
LEAKS = (
    "Traceback",
    "asyncpg",
    "SELECT",
    "ray.",
    "/work/",
    "pydantic",
    "jwt.",
    "Error(",
    'File "',
)


def assert_problem(reply: httpx.Response, status: int | set[int]) -> dict:
    """The reply is RFC 9457 problem+json with this status and leaks nothing internal."""
    statuses = {status} if isinstance(status, int) else status
    assert reply.status_code in statuses, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith(PROBLEM), reply.headers
    body = reply.json()
    assert body["status"] == reply.status_code
    assert body["type"].startswith("https://") and body["title"]
    for leak in LEAKS:
        assert leak not in reply.text, (leak, reply.text)
    return body
