"""Password reset by email, end to end: the mail lands in var/mail, the token works once."""

import asyncio
import hashlib
import re
import secrets
import time
import uuid

import pytest

from tests.e2e.problems import assert_problem
from tests.e2e.shoppers import auth, new_shopper
from tests.integration.test_notifications import mails_to, text_of, wait_for_mail

pytestmark = pytest.mark.e2e

TOKEN = re.compile(r"^    (\S{30,})$", re.MULTILINE)


@pytest.fixture(scope="module")
def embedded_smtp(system):
    if system.smtp_url:
        pytest.skip("AGORA_SMTP_URL is set: mail does not land in var/mail")
    return system


async def _reset_mails(settings, email: str, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        found = [
            m
            for m in mails_to(settings, email)
            if str(m["Subject"]) in ("Redefinição de senha", "Reset your password")
        ]
        if len(found) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    tokens = []
    for mail in found:
        match = TOKEN.search(text_of(mail))
        assert match, text_of(mail)
        tokens.append(match.group(1))
    return tokens


async def test_reset_end_to_end(http, embedded_smtp, db):
    shopper = new_shopper(http)
    old = http.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": shopper["email"],
            "password": shopper["password"],
        },
    ).json()
    assert (
        http.post("/v1/auth/password/forgot", json={"email": shopper["email"]}).status_code == 202
    )
    (token,) = await _reset_mails(embedded_smtp, shopper["email"], 1)
    stored = await db.fetchrow(
        "SELECT token_hash, expires_at - created_at AS ttl FROM password_resets WHERE user_id = $1",
        shopper["user_id"],
    )
    assert stored["token_hash"] == hashlib.sha256(token.encode()).hexdigest()  # hashed at rest
    assert token not in stored["token_hash"]
    assert stored["ttl"].total_seconds() == pytest.approx(1800, abs=2)

    weak = http.post("/v1/auth/password/reset", json={"token": token, "new_password": "123"})
    assert_problem(weak, 422)  # refused by the policy; the token is kept
    new_password = secrets.token_urlsafe(15)
    done = http.post("/v1/auth/password/reset", json={"token": token, "new_password": new_password})
    assert done.status_code == 204, done.text

    # Every session ended: the old access token and refresh token no longer work.
    assert http.get("/v1/me", headers=auth(shopper)).status_code == 401
    refreshed = http.post(
        "/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]},
    )
    assert refreshed.status_code == 401
    old_login = http.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": shopper["email"],
            "password": shopper["password"],
        },
    )
    assert old_login.status_code == 401
    new_login = http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": shopper["email"], "password": new_password},
    )
    assert new_login.status_code == 200, new_login.text

    again = http.post(
        "/v1/auth/password/reset", json={"token": token, "new_password": new_password}
    )
    assert assert_problem(again, 400)["type"].endswith("invalid-reset-token")
    changed = await wait_for_mail(embedded_smtp, shopper["email"], "senha foi alterada")
    assert len(changed) == 1


async def test_unknown_address_answers_the_same_and_sends_nothing(http, embedded_smtp, db):
    email = f"nobody-{uuid.uuid4().hex}@example.com"
    reply = http.post("/v1/auth/password/forgot", json={"email": email})
    assert reply.status_code == 202 and reply.content == b""
    assert http.post("/v1/auth/password/forgot", json={"email": "not an email"}).status_code == 202
    await asyncio.sleep(1)
    assert mails_to(embedded_smtp, email) == []
    assert await db.fetchval("SELECT count(*) FROM mail_outbox WHERE to_addr = $1", email) == 0


async def test_an_expired_token_is_refused(http, db):
    shopper = new_shopper(http)
    token = secrets.token_urlsafe(32)
    await db.execute(
        "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at)"
        " VALUES ($1, $2, now() - interval '31 minutes', now() - interval '1 minute')",
        hashlib.sha256(token.encode()).hexdigest(),
        shopper["user_id"],
    )
    reply = http.post(
        "/v1/auth/password/reset", json={"token": token, "new_password": secrets.token_urlsafe(15)}
    )
    assert assert_problem(reply, 400)["type"].endswith("invalid-reset-token")
    assert http.get("/v1/me", headers=auth(shopper)).status_code == 200  # nothing changed


async def test_a_second_request_spends_the_first_token_on_reset(http, embedded_smtp):
    shopper = new_shopper(http)
    for _ in range(2):
        assert (
            http.post("/v1/auth/password/forgot", json={"email": shopper["email"]}).status_code
            == 202
        )
    first, second = await _reset_mails(embedded_smtp, shopper["email"], 2)
    password = secrets.token_urlsafe(15)
    ok = http.post("/v1/auth/password/reset", json={"token": second, "new_password": password})
    assert ok.status_code == 204
    stale = http.post("/v1/auth/password/reset", json={"token": first, "new_password": password})
    assert_problem(stale, 400)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/auth/password/forgot", {}, 422),
        ("/v1/auth/password/forgot", {"email": 42}, 422),
        ("/v1/auth/password/forgot", {"email": "a@b.c", "extra": 1}, 422),
        ("/v1/auth/password/forgot", {"email": "x" * 300 + "@example.com"}, 422),
        ("/v1/auth/password/forgot", [], 422),
        ("/v1/auth/password/forgot", {"email": "a\u0000@b.c"}, 422),
        ("/v1/auth/password/reset", {}, 422),
        ("/v1/auth/password/reset", {"token": "", "new_password": "x"}, 422),
        ("/v1/auth/password/reset", {"token": "t" * 201, "new_password": "x"}, 422),
        ("/v1/auth/password/reset", {"token": "nope", "new_password": 12345678901}, 422),
        ("/v1/auth/password/reset", {"token": "nope", "new_password": "S3cure-enough-pw"}, 400),
        ("/v1/auth/password/reset", {"token": "nope", "new_password": "y" * 2000}, 422),
    ],
)
def test_garbage_is_a_problem_and_changes_nothing(http, path, body, status):
    assert_problem(http.post(path, json=body), status)


@pytest.mark.parametrize("path", ["/v1/auth/password/forgot", "/v1/auth/password/reset"])
def test_malformed_json_is_a_problem(http, path):
    reply = http.post(path, content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(reply, {400, 422})
