"""Auth, sessions, MFA, rate limits and GDPR over HTTP, as shoppers and operators see them.

Every test shares the client address 127.0.0.1 (the local haproxy), and token, MFA,
register and enrol requests count against one per-IP budget (120 a minute), so
this module keeps its auth calls few: logged-in users are module fixtures and
the whole module makes well under ``AUTH_CALL_BUDGET`` counted requests.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cluster.crypto import secretbox
from tests.conftest import eventually
from tests.e2e.problems import assert_problem

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AGORA = Path(sys.executable).parent / "agora"
# Requests that count against the per-IP auth limit (the handler runs _limit_ip).
COUNTED = {
    "/v1/auth/register",
    "/v1/auth/token",
    "/v1/auth/mfa",
    "/v1/auth/mfa/enroll",
    "/v1/auth/mfa/confirm",
}
AUTH_CALL_BUDGET = 80
_auth_calls = [0]


def _reached_the_limiter(response: httpx.Response) -> bool:
    """Whether the request counted: refused before the handler ran (no or bad bearer,
    body validation) it did not; the token endpoint counts every request."""
    path = response.request.url.path
    if path not in COUNTED:
        return False
    if path == "/v1/auth/token" or response.status_code not in {400, 401, 422}:
        return True
    kind = response.json().get("type", "").rsplit("/", 1)[-1]
    return kind not in {"validation", "malformed-json", "unauthorized"}


def _count(response: httpx.Response) -> None:
    response.read()
    _auth_calls[0] += _reached_the_limiter(response)


async def _acount(response: httpx.Response) -> None:
    await response.aread()
    _auth_calls[0] += _reached_the_limiter(response)


@pytest.fixture(scope="module")
def http(base_url):
    hooks = {"response": [_count]}
    with httpx.Client(base_url=base_url, timeout=60, event_hooks=hooks) as client:
        yield client
    # Keep the module within the shared per-IP auth budget (see the module docstring).
    print(f"\n{_auth_calls[0]} auth requests counted against the per-IP limit")
    assert _auth_calls[0] <= AUTH_CALL_BUDGET, _auth_calls[0]


# --- helpers ---------------------------------------------------------------------


@dataclass
class Account:
    email: str
    password: str
    name: str
    user_id: str


@dataclass
class Tokens:
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}

    @property
    def sid(self) -> str:
        return claims_of(self.access)["sid"]


def new_email() -> str:
    return f"t-{uuid.uuid4().hex}@example.com"


def new_password() -> str:
    return secrets.token_urlsafe(12)


def assert_401(reply: httpx.Response) -> dict:
    body = assert_problem(reply, 401)
    assert reply.headers["www-authenticate"].lower().startswith("bearer")
    assert "access_token" not in body and "refresh_token" not in body
    return body


def register(http: httpx.Client, name: str | None = None) -> Account:
    email, password = new_email(), new_password()
    name = name or f"Tester {uuid.uuid4().hex[:6]}"
    reply = http.post(
        "/v1/auth/register", json={"email": email, "password": password, "name": name}
    )
    assert reply.status_code == 201, reply.text
    return Account(email, password, name, reply.json()["user_id"])


def password_grant(
    http: httpx.Client, email: str, password: str, headers: dict | None = None, form: bool = True
) -> httpx.Response:
    data = {"grant_type": "password", "username": email, "password": password}
    if form:
        return http.post("/v1/auth/token", data=data, headers=headers)
    return http.post("/v1/auth/token", json=data, headers=headers)


def refresh_grant(http: httpx.Client, refresh: str) -> httpx.Response:
    return http.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
    )


def tokens_of(reply: httpx.Response) -> Tokens:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["refresh_token"].startswith("rt.")
    return Tokens(body["access_token"], body["refresh_token"])


def login(http: httpx.Client, account: Account, headers: dict | None = None) -> Tokens:
    return tokens_of(password_grant(http, account.email, account.password, headers))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(unb64(token.split(".")[1]))


def header_of(token: str) -> dict[str, Any]:
    return json.loads(unb64(token.split(".")[0]))


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shopper(http) -> tuple[Account, Tokens]:
    account = register(http)
    return account, login(http, account)


@pytest.fixture(scope="module")
def jwks(http) -> dict[str, Any]:
    reply = http.get("/.well-known/jwks.json")
    assert reply.status_code == 200
    keys = reply.json()["keys"]
    assert keys and all(k["kty"] == "EC" and k["alg"] == "ES256" and "d" not in k for k in keys)
    return reply.json()


# --- 1. every route declares its role, and the role is enforced --------------------


def _operations(http) -> list[tuple[str, str, dict]]:
    spec = http.get("/openapi.json").json()
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _call(http, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    url = re.sub(r"\{(\w+)\}", lambda m: "ELE-000001" if m[1] == "sku" else "x", path)
    assert "{" not in url, f"fill the path parameter of {path}"
    if method in {"POST", "PUT", "PATCH"}:
        return http.request(method, url, json={}, headers=headers)
    return http.request(method, url, headers=headers)


def test_every_operation_declares_a_role(http):
    operations = _operations(http)
    assert len(operations) >= 20
    undeclared = [
        (m, p)
        for m, p, op in operations
        if op.get("x-required-role") not in {"public", "shopper", "admin"}
    ]
    assert undeclared == []
    roles = {(m, p): op["x-required-role"] for m, p, op in operations}
    for operation in [
        ("GET", "/v1/me"),
        ("DELETE", "/v1/me"),
        ("GET", "/v1/me/export"),
        ("POST", "/v1/auth/logout"),
        ("GET", "/v1/auth/sessions"),
    ]:
        assert roles[operation] == "shopper", operation
    assert roles[("GET", "/v1/admin/cluster")] == "admin"
    assert all(r == "admin" for (_m, p), r in roles.items() if p.startswith("/v1/admin/"))


def test_protected_operations_refuse_missing_and_garbage_tokens(http, shopper):
    _account, tokens = shopper
    wrong = []
    checked = 0
    for method, path, op in _operations(http):
        role = op["x-required-role"]
        if role == "public":
            continue
        checked += 1
        for headers in (
            None,
            {"Authorization": "Bearer garbage"},
            {"Authorization": "Bearer a.b.c"},
            {"Authorization": f"Basic {b64(b'user:pass')}"},
            {"Authorization": "Bearer"},
        ):
            reply = _call(http, method, path, headers)
            if reply.status_code != 401:
                wrong.append((method, path, headers, reply.status_code))
            else:
                assert_401(reply)
        if role == "admin":
            reply = _call(http, method, path, tokens.headers)
            if reply.status_code != 403:
                wrong.append((method, path, "shopper", reply.status_code))
            else:
                assert assert_problem(reply, 403)["type"].endswith("/forbidden")
    assert checked >= 8
    assert wrong == []


# --- 2. forged access tokens -------------------------------------------------------


def _pem(jwk: dict[str, Any]) -> bytes:
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64(jwk["x"]), "big"),
        int.from_bytes(unb64(jwk["y"]), "big"),
        ec.SECP256R1(),
    )
    return numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _own_key() -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }
    return key, jwk


def _forgeries(token: str, jwks: dict[str, Any], other_user: str) -> dict[str, str]:
    h64, p64, sig = token.split(".")
    header, claims = header_of(token), claims_of(token)
    kid = header["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    now = int(time.time())
    own, own_jwk = _own_key()

    def hs256(secret: bytes, payload: dict[str, Any]) -> str:
        signing_input = f"{b64json({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{b64json(payload)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    def own_signed(payload: dict[str, Any], headers: dict[str, Any]) -> str:
        return jwt.encode(payload, own, algorithm="ES256", headers=headers)

    escalated = {**claims, "roles": ["shopper", "admin"]}
    return {
        "alg-none": f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{p64}.",
        "alg-None-with-kid": f"{b64json({'alg': 'None', 'kid': kid})}.{p64}.",
        "alg-none-with-signature": f"{b64json({'alg': 'none', 'kid': kid})}.{p64}.{sig}",
        "hs256-keyed-with-public-pem": hs256(_pem(jwk), claims),
        "hs256-keyed-with-public-pem-escalated": hs256(_pem(jwk), escalated),
        "hs256-keyed-with-jwk-json": hs256(json.dumps(jwk).encode(), claims),
        "tampered-sub": f"{h64}.{b64json({**claims, 'sub': other_user})}.{sig}",
        "tampered-roles": f"{h64}.{b64json(escalated)}.{sig}",
        "tampered-exp": f"{h64}.{b64json({**claims, 'exp': claims['exp'] + 86400})}.{sig}",
        "signature-stripped": f"{h64}.{p64}.",
        "signature-flipped": f"{h64}.{p64}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}",
        "own-key-unknown-kid": own_signed(claims, {"kid": "attacker-key"}),
        "own-key-no-kid": own_signed(claims, {}),
        "own-key-path-kid": own_signed(claims, {"kid": "../../../../dev/null"}),
        "own-key-real-kid": own_signed(claims, {"kid": kid}),
        "own-key-real-kid-expired": own_signed(
            {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}, {"kid": kid}
        ),
        "own-key-real-kid-wrong-aud": own_signed({**claims, "aud": "someone-else"}, {"kid": kid}),
        "own-key-real-kid-wrong-iss": own_signed(
            {**claims, "iss": "https://evil.example"}, {"kid": kid}
        ),
        "own-key-embedded-jwk": own_signed(claims, {"kid": kid, "jwk": own_jwk}),
        "own-key-jku": own_signed(
            claims, {"kid": "attacker-key", "jku": "http://127.0.0.1:9/jwks.json"}
        ),
        "rs256-header": f"{b64json({'alg': 'RS256', 'kid': kid})}.{p64}.{sig}",
        "two-parts": f"{h64}.{p64}",
        "four-parts": f"{token}.{sig}",
        "payload-not-json": f"{h64}.{b64(b'not json')}.{sig}",
    }


async def test_forged_access_tokens_are_refused(http, shopper, jwks, db):
    account, tokens = shopper
    baseline = http.get("/v1/me", headers=tokens.headers)
    assert baseline.status_code == 200 and baseline.json()["email"] == account.email
    claims = claims_of(tokens.access)
    assert claims["sub"] == account.user_id and claims["roles"] == ["shopper"]
    assert claims["exp"] - claims["iat"] == 900
    assert header_of(tokens.access)["alg"] == "ES256"
    other_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO users (user_id, email, name, password_hash) VALUES ($1, $2, 'Other', '!')",
        other_id,
        f"other-{other_id}@example.com",
    )
    other = await db.fetchval("SELECT user_id FROM users WHERE user_id = $1", other_id)
    assert other
    accepted = []
    for name, forged in _forgeries(tokens.access, jwks, other).items():
        reply = http.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
        if reply.status_code != 401:
            accepted.append((name, reply.status_code))
            continue
        body = assert_401(reply)
        assert account.email not in reply.text and other not in reply.text
        assert body["type"].endswith("/unauthorized"), body
    assert accepted == []
    assert http.get("/v1/me", headers=tokens.headers).status_code == 200


# --- 3. refresh rotation, reuse detection, races ------------------------------------


@pytest.fixture(scope="module")
def refresher(http) -> Account:
    return register(http)


async def test_refresh_rotates_and_reuse_revokes_the_family(http, refresher):
    first = login(http, refresher)
    parts = first.refresh.split(".")
    assert len(parts) == 4 and parts[1] == refresher.user_id and parts[2] == first.sid

    second = tokens_of(refresh_grant(http, first.refresh))
    assert second.refresh != first.refresh and second.access != first.access
    assert second.sid == first.sid
    assert claims_of(second.access)["sub"] == refresher.user_id
    assert http.get("/v1/me", headers=second.headers).status_code == 200

    # The already-used token again: refused, and the whole family dies with it.
    body = assert_401(refresh_grant(http, first.refresh))
    assert body["type"].endswith("/invalid_grant") and body["error"] == "invalid_grant"
    assert_401(refresh_grant(http, second.refresh))

    async def access_revoked():
        return http.get("/v1/me", headers=second.headers).status_code == 401

    await eventually(access_revoked, timeout=5)
    assert_401(http.get("/v1/me", headers=second.headers))
    assert_401(http.get("/v1/me", headers=first.headers))
    sessions = http.get("/v1/auth/sessions", headers=second.headers)
    assert_401(sessions)


@pytest.mark.parametrize("attempt", [1, 2])
async def test_concurrent_refresh_with_one_token_succeeds_once(base_url, http, refresher, attempt):
    tokens = login(http, refresher)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, event_hooks={"response": [_acount]}
    ) as client:
        data = {"grant_type": "refresh_token", "refresh_token": tokens.refresh}
        replies = await asyncio.gather(
            client.post("/v1/auth/token", data=data), client.post("/v1/auth/token", data=data)
        )
    statuses = sorted(r.status_code for r in replies)
    # One caller wins the rotation; the other presented a used token (reuse).
    assert statuses == [200, 401], [r.text for r in replies]
    assert_401(next(r for r in replies if r.status_code == 401))
    winner = tokens_of(next(r for r in replies if r.status_code == 200))
    assert winner.sid == tokens.sid and winner.refresh != tokens.refresh


# --- 4. logout and session management ------------------------------------------------


async def test_logout_and_ending_other_sessions(http):
    account = register(http)
    a = login(http, account)
    b = login(http, account)
    assert a.sid != b.sid

    listed = http.get("/v1/auth/sessions", headers=a.headers)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert {s["id"]: s["current"] for s in items} == {a.sid: True, b.sid: False}
    assert all("refresh" not in json.dumps(s).lower() for s in items)
    assert a.refresh.split(".")[3] not in listed.text and a.refresh not in listed.text

    logout = http.post("/v1/auth/logout", headers=a.headers)
    assert logout.status_code == 204
    assert_401(http.get("/v1/me", headers=a.headers))
    assert_401(refresh_grant(http, a.refresh))
    assert_401(http.post("/v1/auth/logout", headers=a.headers))
    assert http.get("/v1/me", headers=b.headers).status_code == 200

    c = login(http, account)
    listed = http.get("/v1/auth/sessions", headers=c.headers).json()["items"]
    assert {s["id"]: s["current"] for s in listed} == {b.sid: False, c.sid: True}

    ended = http.delete(f"/v1/auth/sessions/{b.sid}", headers=c.headers)
    assert ended.status_code == 204, ended.text

    async def b_is_out():
        return http.get("/v1/me", headers=b.headers).status_code == 401

    await eventually(b_is_out, timeout=5)
    assert_401(http.get("/v1/me", headers=b.headers))
    assert_401(refresh_grant(http, b.refresh))
    assert_problem(http.delete(f"/v1/auth/sessions/{b.sid}", headers=c.headers), 404)
    assert_problem(http.delete(f"/v1/auth/sessions/{uuid.uuid4().hex}", headers=c.headers), 404)
    assert_problem(http.delete(f"/v1/auth/sessions/{'x' * 300}", headers=c.headers), {404, 422})

    listed = http.get("/v1/auth/sessions", headers=c.headers).json()["items"]
    assert [s["id"] for s in listed] == [c.sid]
    assert http.get("/v1/me", headers=c.headers).status_code == 200


async def test_a_user_cannot_end_another_users_session(http, shopper, refresher):
    _account, tokens = shopper
    victim = login(http, refresher)
    reply = http.delete(f"/v1/auth/sessions/{victim.sid}", headers=tokens.headers)
    assert_problem(reply, 404)
    assert http.get("/v1/me", headers=victim.headers).status_code == 200


# --- 5. TOTP MFA ------------------------------------------------------------------


def _wrong_code(secret: str) -> str:
    totp, now = pyotp.TOTP(secret), time.time()
    valid = {totp.at(now + 30 * d) for d in range(-3, 4)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in valid)


def _mfa_required(http, account: Account) -> str:
    reply = password_grant(http, account.email, account.password)
    body = assert_401(reply)
    assert body["type"].endswith("/mfa_required") and body["error"] == "mfa_required"
    assert body["mfa_token"] and body["expires_in"] > 0
    return body["mfa_token"]


async def test_totp_enrolment_login_replay_and_recovery_codes(http, db):
    account = register(http)
    tokens = login(http, account)
    enrol = http.post("/v1/auth/mfa/enroll", headers=tokens.headers)
    assert enrol.status_code == 200, enrol.text
    body = enrol.json()
    secret = body["secret"]
    assert len(secret) == 32 and set(body) >= {"secret", "otpauth_uri", "qr_svg"}
    assert body["otpauth_uri"].startswith("otpauth://totp/")
    assert f"secret={secret}" in body["otpauth_uri"] and "issuer=Agora" in body["otpauth_uri"]
    assert body["qr_svg"].startswith("<svg") and body["qr_svg"].rstrip().endswith("</svg>")
    assert http.get("/v1/me", headers=tokens.headers).json()["mfa_enabled"] is False

    totp = pyotp.TOTP(secret)
    confirm = http.post("/v1/auth/mfa/confirm", json={"code": totp.now()}, headers=tokens.headers)
    assert confirm.status_code == 200, confirm.text
    codes = confirm.json()["recovery_codes"]
    assert confirm.json()["mfa_enabled"] is True
    assert len(codes) == len(set(codes)) == 10
    stored = await db.fetch(
        "SELECT code_hash FROM recovery_codes WHERE user_id = $1", account.user_id
    )
    assert len(stored) == 10 and not {r["code_hash"] for r in stored} & set(codes)
    assert http.get("/v1/me", headers=tokens.headers).json()["mfa_enabled"] is True

    # A password alone no longer logs in; a wrong code is refused, the right one works.
    mfa_token = _mfa_required(http, account)
    assert_401(
        http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": _wrong_code(secret)})
    )
    # The confirm code's step is used up, so take the next step's (±1 step drift).
    code = totp.at(time.time() + 30)
    mfa_tokens = tokens_of(http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code}))
    assert http.get("/v1/me", headers=mfa_tokens.headers).json()["email"] == account.email
    assert claims_of(mfa_tokens.access)["sub"] == account.user_id
    # The mfa_token is single use.
    assert_401(http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code}))

    # The same TOTP code on a fresh mfa_token: refused (no replay); a recovery code works once.
    mfa_token = _mfa_required(http, account)
    body = assert_401(http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code}))
    assert body["error"] == "invalid_grant"
    recovered = tokens_of(
        http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": codes[0].upper()})
    )
    export = http.get("/v1/me/export", headers=recovered.headers).json()
    assert export["security"] == {"mfa_enabled": True, "unused_recovery_codes": 9}

    mfa_token = _mfa_required(http, account)
    assert_401(http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, "code": codes[0]}))
    assert_401(http.post("/v1/auth/mfa", json={"mfa_token": "not-a-token", "code": codes[1]}))

    again = http.post("/v1/auth/mfa/enroll", headers=recovered.headers)
    assert assert_problem(again, 409)["type"].endswith("/mfa-already-enabled")
    secret_now = await db.fetchval(
        "SELECT mfa_secret FROM users WHERE user_id = $1", account.user_id
    )
    # Sealed at rest (cluster/crypto/secretbox.py): never the plaintext in the column.
    assert secret not in secret_now
    assert secretbox.open_secret(secret_now, secretbox.MFA, account.user_id) == secret


# --- 6. brute force ------------------------------------------------------------------


def test_five_failed_logins_lock_the_account_for_a_while(http):
    account = register(http)
    local, domain = account.email.split("@")
    # The count is per account, whatever the spelling of its address.
    spellings = [account.email, account.email.upper(), f" {local}@{domain.upper()} "]
    for i in range(5):
        reply = password_grant(http, spellings[i % 3], new_password())
        assert assert_401(reply)["type"].endswith("/invalid_grant")
    reply = password_grant(http, account.email, account.password)
    body = assert_problem(reply, 429)
    assert body["type"].endswith("/rate-limited")
    retry_after = reply.headers["retry-after"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 900
    assert "access_token" not in reply.text


def test_successful_logins_do_not_count_as_failures(http):
    account = register(http)
    for _ in range(4):
        assert_401(password_grant(http, account.email, new_password(), form=False))
    # Four failures and then two successes: a success that counted would make the
    # second one the sixth attempt.
    login(http, account)
    tokens_of(password_grant(http, account.email.upper(), account.password, form=False))


# --- 7. mass assignment, validation, garbage ------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"role": "admin"},
        {"roles": ["admin"]},
        {"is_admin": True},
        {"user_id": "u-1"},
        {"mfa_secret": "JBSWY3DPEHPK3PXP"},
        {"email_verified": True},
    ],
    ids=lambda e: next(iter(e)),
)
async def test_register_refuses_extra_fields(http, db, extra):
    email = new_email()
    body = {"email": email, "password": new_password(), "name": "Mallory", **extra}
    problem = assert_problem(http.post("/v1/auth/register", json=body), 422)
    assert any(next(iter(extra)) in e["field"] for e in problem["errors"]), problem
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0


async def test_profile_patch_refuses_privileged_fields(http, db, shopper):
    account, tokens = shopper
    for body in (
        {"roles": ["admin"]},
        {"email": "x@y.z"},
        {"role": "admin"},
        {"name": "New", "roles": ["shopper", "admin"]},
        {"user_id": "other"},
        {"mfa_secret": None},
        {"erased_at": None},
    ):
        assert_problem(http.patch("/v1/me", json=body, headers=tokens.headers), 422)
    ok = http.patch("/v1/me", json={"preferences": {"roles": "admin"}}, headers=tokens.headers)
    assert ok.status_code == 200
    me = http.get("/v1/me", headers=tokens.headers).json()
    assert me["roles"] == ["shopper"] and me["email"] == account.email
    assert me["name"] == account.name
    row = await db.fetchrow("SELECT email, roles FROM users WHERE user_id = $1", account.user_id)
    assert row["email"] == account.email and list(row["roles"]) == ["shopper"]


async def test_register_validation(http, db, shopper):
    account, _tokens = shopper
    local, domain = account.email.split("@")
    taken = http.post(
        "/v1/auth/register",
        json={
            "email": f"  {local.upper()}@{domain.upper()} ",
            "password": new_password(),
            "name": "Twin",
        },
    )
    assert assert_problem(taken, 409)["type"].endswith("/email-taken")
    for password in ("password123", "a" * 4 + "b" * 5):
        email = new_email()
        reply = http.post(
            "/v1/auth/register", json={"email": email, "password": password, "name": "Weak"}
        )
        problem = assert_problem(reply, 422)
        assert problem["errors"][0]["field"] == "body.password"
        assert password not in reply.text
        assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0
    assert (
        await db.fetchval("SELECT count(*) FROM users WHERE lower(email) = $1", account.email) == 1
    )


GARBAGE = [
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"text"',
    b"{}",
    b'{"a": 1}',
    b"\xff\xfe",
    b"[" * 500 + b"]" * 500,
]


def test_garbage_bodies_are_problems(http, shopper):
    _account, tokens = shopper
    json_type = {"content-type": "application/json"}
    register_bad = [
        *GARBAGE,
        b'{"email": 1, "password": 2, "name": 3}',
        b'{"email": "a@b.co", "password": "' + b"x" * 2000 + b'", "name": "n"}',
        b'{"email": "a@b.co", "password": "longenough1", "name": ""}',
    ]
    for body in register_bad:
        assert_problem(http.post("/v1/auth/register", content=body, headers=json_type), {400, 422})
    mfa_bad = [
        *GARBAGE,
        b'{"mfa_token": 1, "code": 2}',
        b'{"mfa_token": "x"}',
        b'{"mfa_token": "x", "code": "123456", "extra": 1}',
        b'{"mfa_token": "x", "code": "' + b"1" * 100 + b'"}',
    ]
    for body in mfa_bad:
        assert_problem(http.post("/v1/auth/mfa", content=body, headers=json_type), {400, 422})
    auth_json = {**json_type, **tokens.headers}
    for body in [*GARBAGE, b'{"code": 123456}', b'{"code": "1234567890123"}']:
        reply = http.post("/v1/auth/mfa/confirm", content=body, headers=auth_json)
        assert_problem(reply, {400, 422})
    patch_bad = [
        *GARBAGE[:5],
        b'{"name": ""}',
        b'{"name": 5}',
        b'{"preferences": {"a": [1]}}',
        b'{"consents": {"marketing": "yes"}}',
        b'{"preferences": "x"}',
        b'{"name": "' + b"n" * 101 + b'"}',
    ]
    for body in patch_bad:
        assert_problem(http.patch("/v1/me", content=body, headers=auth_json), {400, 422})
    assert http.get("/v1/me", headers=tokens.headers).json()["name"] != ""
    # The token endpoint counts against the per-IP limit: a few kinds only.
    token_bad = [
        (b"not json", json_type, {400}),
        (b"[]", json_type, {400}),
        (b'{"grant_type": "password", "username": ["a"], "password": 1}', json_type, {422}),
        (
            b"grant_type=client_credentials",
            {"content-type": "application/x-www-form-urlencoded"},
            {400},
        ),
        (
            b"grant_type=password&username=a%40b.co",
            {"content-type": "application/x-www-form-urlencoded"},
            {422},
        ),
        (
            b'{"grant_type": "refresh_token", "refresh_token": "rt.nope.nope.nope"}',
            json_type,
            {401},
        ),
    ]
    for body, headers, statuses in token_bad:
        assert_problem(http.post("/v1/auth/token", content=body, headers=headers), statuses)


def _chunks(size: int):
    yield b'{"mfa_token": "'
    for _ in range(size // 8192):
        yield b"x" * 8192
    yield b'", "code": "123456"}'


@pytest.mark.parametrize("path", ["/v1/auth/register", "/v1/auth/mfa"])
def test_oversized_bodies_are_refused_also_when_chunked(http, path):
    json_type = {"content-type": "application/json"}
    big = b'{"mfa_token": "' + b"x" * 100_000 + b'", "code": "123456"}'
    body = assert_problem(http.post(path, content=big, headers=json_type), 413)
    assert body["type"].endswith("/payload-too-large")
    # Without Content-Length (chunked transfer coding) the 64 KiB limit holds too.
    reply = http.post(path, content=_chunks(1024 * 1024), headers=json_type)
    assert "content-length" not in {k.lower() for k in reply.request.headers}
    assert_problem(reply, 413)


# --- 8. GDPR export and erasure ---------------------------------------------------------


async def _tables(db) -> list[str]:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    return [r["table_name"] for r in rows]


async def _where_found(db, needle: str) -> list[str]:
    found = []
    for table in await _tables(db):
        quoted = '"' + table.replace('"', '""') + '"'
        count = await db.fetchval(
            f"SELECT count(*) FROM {quoted} t WHERE t::text ILIKE '%' || $1 || '%'", needle
        )
        if count:
            found.append(f"{table}: {count}")
    return found


async def test_export_and_erasure(http, db):
    name = f"Zed{uuid.uuid4().hex}"
    account = register(http, name=name)
    tokens = login(http, account)
    added = http.post(
        "/v1/cart/items", json={"sku": "ELE-000001", "quantity": 2}, headers=tokens.headers
    )
    assert added.status_code == 200, added.text
    patched = http.patch(
        "/v1/me",
        json={
            "preferences": {"language": "pt-BR", "nickname": name},
            "consents": {"marketing": True},
        },
        headers=tokens.headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["preferences"]["language"] == "pt-BR"

    export = http.get("/v1/me/export", headers=tokens.headers)
    assert export.status_code == 200
    data = export.json()
    assert data["profile"]["email"] == account.email and data["profile"]["name"] == name
    assert data["profile"]["user_id"] == account.user_id
    assert "password_hash" not in export.text and "mfa_secret" not in export.text
    assert [s["id"] for s in data["sessions"]] == [tokens.sid]
    assert [(x["sku"], x["quantity"]) for x in data["carts"][0]["lines"]] == [("ELE-000001", 2)]
    assert data["consents"] == {"marketing": True}

    # Before erasure the scan does find the user (the scan itself works).
    assert await _where_found(db, account.email)
    assert await _where_found(db, name)

    erased = http.delete("/v1/me", headers=tokens.headers)
    assert erased.status_code == 204, erased.text
    assert_401(http.get("/v1/me", headers=tokens.headers))
    assert_401(http.get("/v1/me/export", headers=tokens.headers))
    assert_401(password_grant(http, account.email, account.password))
    assert_401(refresh_grant(http, tokens.refresh))

    local = account.email.split("@")[0]

    async def nothing_left():
        return not any([await _where_found(db, n) for n in (account.email, local, name)])

    try:
        await eventually(nothing_left, timeout=5, interval=0.2)
    except AssertionError:
        leftovers = {n: await _where_found(db, n) for n in (account.email, local, name)}
        raise AssertionError(f"personal data left after erasure: {leftovers}") from None
    row = await db.fetchrow(
        "SELECT erased_at, roles FROM users WHERE user_id = $1", account.user_id
    )
    assert row is not None and row["erased_at"] is not None
    erasures = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND type = 'user.erased'", account.user_id
    )
    assert erasures == 1
    # The address is free again: the erased account no longer holds it.
    fresh = {"email": account.email, "password": new_password(), "name": "New"}
    again = http.post("/v1/auth/register", json=fresh)
    assert again.status_code == 201, again.text
    assert again.json()["user_id"] != account.user_id


# --- 9. login merges the anonymous cart --------------------------------------------------


def test_login_merges_the_anonymous_cart(http):
    account = register(http)
    anon = http.get("/v1/cart")
    cart_token = anon.json()["cart_token"]
    anon_headers = {"X-Cart-Token": cart_token}
    added = http.post(
        "/v1/cart/items", json={"sku": "BOO-000002", "quantity": 2}, headers=anon_headers
    )
    assert added.status_code == 200, added.text

    tokens = login(http, account, headers=anon_headers)
    cart = http.get("/v1/cart", headers=tokens.headers)
    assert cart.status_code == 200
    assert [(x["sku"], x["quantity"]) for x in cart.json()["lines"]] == [("BOO-000002", 2)]
    assert cart.json()["cart_token"] is None
    assert http.get("/v1/cart", headers=anon_headers).json()["lines"] == []


# --- 10. operators ------------------------------------------------------------------------


def _agora_admin_create(email: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(AGORA), "admin", "create", email, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def test_admin_from_the_cli_sees_the_cluster(http, db, system):
    weak_email = new_email()
    weak = _agora_admin_create(weak_email, "password123")
    assert weak.returncode != 0
    assert "password123" not in weak.stdout + weak.stderr
    short = _agora_admin_create(weak_email, "")
    assert short.returncode != 0
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", weak_email) == 0

    email, password = new_email(), new_password()
    made = _agora_admin_create(email, password)
    assert made.returncode == 0, made.stderr
    assert password not in made.stdout + made.stderr
    admins = await db.fetch(
        "SELECT user_id, roles FROM users WHERE email = $1 AND 'admin' = ANY(roles)", email
    )
    assert len(admins) == 1 and "admin" in admins[0]["roles"]
    defaults = await db.fetch(
        "SELECT email FROM users WHERE 'admin' = ANY(roles)"
        " AND email ~* '^(admin|root|administrator|operator|agora|test)@'"
    )
    assert defaults == [], "a default admin account exists"

    tokens = tokens_of(password_grant(http, email, password))
    assert "admin" in claims_of(tokens.access)["roles"]
    reply = http.get("/v1/admin/cluster", headers=tokens.headers)
    assert reply.status_code == 200, reply.text
    cluster = reply.json()
    kinds = [s["kind"] for s in cluster["shards"]]
    assert kinds.count("cart") == system.cart_shards
    assert kinds.count("session") == system.session_shards
    assert all("error" not in s for s in cluster["shards"]), cluster["shards"]
    assert cluster["nodes"] and any(n["alive"] for n in cluster["nodes"])
    assert http.get("/v1/me", headers=tokens.headers).json()["roles"] == ["shopper", "admin"]
