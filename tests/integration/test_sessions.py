"""Session shards on a real local Ray: a revocation outlives the actor that recorded it."""

import secrets
import uuid

import httpx
import pytest
import ray

from serve.runtime import shard_directory
from tests.conftest import eventually

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token}
    return await http.post("/v1/auth/token", data=data)


async def login(http: httpx.AsyncClient, email: str, password: str) -> dict:
    reply = await http.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": password}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def sid_of(tokens: dict) -> str:
    return tokens["refresh_token"].split(".")[2]


def assert_401(reply: httpx.Response) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.headers["content-type"].startswith(PROBLEM)


async def test_revocations_survive_a_session_shard_restart(system, base_url, db):
    email, password = f"t-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(12)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        account = {"email": email, "password": password, "name": "Restart"}
        reply = await http.post("/v1/auth/register", json=account)
        assert reply.status_code == 201, reply.text
        user_id = reply.json()["user_id"]
        gone = await login(http, email, password)
        kept = await login(http, email, password)
        assert (await http.post("/v1/auth/logout", headers=bearer(gone))).status_code == 204

        # Logout answers after the revocation committed: it is in PostgreSQL already.
        doc = await db.fetchval("SELECT data FROM user_sessions WHERE user_id = $1", user_id)
        stored = {s["sid"]: s for s in doc["sessions"]}
        assert stored[sid_of(gone)]["revoked_ms"] is not None
        assert stored[sid_of(kept)]["revoked_ms"] is None
        assert gone["refresh_token"] not in str(doc) and kept["refresh_token"] not in str(doc)

        shard = shard_directory(system).get("session", user_id)
        pid_before = (await shard.stats.remote())["pid"]
        ray.kill(shard, no_restart=False)

        async def restarted():
            try:
                return (await shard.stats.remote())["pid"] != pid_before
            except ray.exceptions.RayActorError:
                return False

        await eventually(restarted, timeout=60, interval=0.2)
        assert (await shard.stats.remote())["resident"] == 0

        assert_401(await refresh(http, gone["refresh_token"]))
        assert_401(await http.get("/v1/me", headers=bearer(gone)))
        renewed = await refresh(http, kept["refresh_token"])
        assert renewed.status_code == 200, renewed.text
        renewed = renewed.json()
        assert sid_of(renewed) == sid_of(kept)
        listed = await http.get("/v1/auth/sessions", headers=bearer(renewed))
        assert listed.status_code == 200, listed.text
        assert [(s["id"], s["current"]) for s in listed.json()["items"]] == [(sid_of(kept), True)]
        # The rotation before the restart is remembered too: the old token is a reuse.
        assert_401(await refresh(http, kept["refresh_token"]))
