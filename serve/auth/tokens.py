"""Access tokens (ES256 JWTs), their signing keys and JWKS, and opaque refresh/MFA tokens.

Verification trusts nothing in a token's header except ``kid``, which only selects
among keys we configured: the algorithm is pinned to ES256 (so ``none``, HS256 keyed
with the public key, RS256 and friends all fail), ``jku``/``jwk``/``x5u`` are never
followed, and the time checks use the ``now`` the caller passes, so tests need no
clock patching. A refused token is a ``Rejected`` value with a stable code.

Refresh tokens and other opaque tokens are random strings that are stored only as
their SHA-256 (``token_hash``); 256 random bits need no slow hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidSignatureError,
    InvalidTokenError,
)

from actors.messages import Rejected

ALGORITHM = "ES256"
CURVE = "P-256"
DEFAULT_LIFETIME_S = 900
DEFAULT_LEEWAY_S = 30
# Our tokens are a few hundred bytes; refusing huge input early bounds parsing work.
MAX_TOKEN_LENGTH = 8192

REQUIRED_CLAIMS = ("exp", "iat", "nbf", "iss", "aud", "sub", "jti")
REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid", "roles"})
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_PUBLIC_JWK_MEMBERS = ("kty", "crv", "x", "y", "kid", "use", "alg")

RejectionCode = Literal[
    "malformed",
    "bad-algorithm",
    "unknown-key",
    "bad-signature",
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "missing-claim",
]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    """One ES256 key pair; ``private_pem`` is None where only verification is needed."""

    kid: str
    private_pem: bytes | None = field(repr=False)
    public_jwk: dict[str, Any]
    created_at: int


@dataclass(frozen=True)
class Claims:
    """The claims of a verified access token."""

    sub: str
    sid: str | None
    roles: tuple[str, ...]
    jti: str
    iss: str
    aud: str | tuple[str, ...]
    iat: int | float
    nbf: int | float
    exp: int | float
    raw: Mapping[str, Any]


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an EC public key."""
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    numbers = public_key.public_numbers()
    jwk: dict[str, Any] = {
        "kty": "EC",
        "crv": CURVE,
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["use"] = "sig"
    jwk["alg"] = ALGORITHM
    return jwk


def generate_key(now: int) -> SigningKey:
    """A fresh P-256 key pair whose ``kid`` is its RFC 7638 thumbprint."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    jwk = _public_jwk(private_key.public_key())
    return SigningKey(kid=jwk["kid"], private_pem=pem, public_jwk=jwk, created_at=now)


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in ``jwk``; ValueError if it is anything else."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != CURVE:
        raise ValueError("only EC P-256 keys are accepted")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise ValueError("key is not an ES256 signing key")
    if "d" in jwk:
        raise ValueError("refusing a JWK that carries a private part")
    x, y = _b64url_decode(str(jwk["x"])), _b64url_decode(str(jwk["y"]))
    if len(x) != 32 or len(y) != 32:
        raise ValueError("bad P-256 coordinate length")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    return numbers.public_key()


def jwks(keys: list[SigningKey]) -> dict[str, list[dict[str, Any]]]:
    """The JSON Web Key Set that publishes the public halves of ``keys``."""
    published = []
    for key in keys:
        jwk = {**key.public_jwk, "kid": key.kid, "use": "sig", "alg": ALGORITHM}
        published.append({name: jwk[name] for name in _PUBLIC_JWK_MEMBERS})
    return {"keys": published}


def key_to_row(key: SigningKey) -> tuple[str, bytes | None, str, int]:
    """(kid, private PEM, public JWK as JSON, created_at), ready for a table row."""
    return key.kid, key.private_pem, json.dumps(key.public_jwk, sort_keys=True), key.created_at


def key_from_row(
    kid: str,
    private_pem: bytes | bytearray | memoryview | None,
    public_jwk_json: str,
    created_at: int,
) -> SigningKey:
    """Inverse of ``key_to_row``; ValueError if the row's parts disagree."""
    jwk = json.loads(public_jwk_json)
    public_key_from_jwk(jwk)
    if jwk.get("kid", kid) != kid:
        raise ValueError("kid column does not match the stored JWK")
    pem = bytes(private_pem) if private_pem is not None else None
    return SigningKey(kid=kid, private_pem=pem, public_jwk=jwk, created_at=int(created_at))


class TokenIssuer:
    """Signs access tokens with one key."""

    def __init__(
        self,
        key: SigningKey,
        issuer: str,
        audience: str,
        lifetime_s: int = DEFAULT_LIFETIME_S,
    ) -> None:
        if key.private_pem is None:
            raise ValueError(f"key {key.kid} has no private part and cannot sign")
        private_key = serialization.load_pem_private_key(key.private_pem, password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise ValueError(f"key {key.kid} is not a P-256 private key")
        self._key = key
        self._private_key = private_key
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s

    @property
    def kid(self) -> str:
        return self._key.kid

    def issue(
        self,
        sub: str,
        roles: list[str],
        now: int,
        session_id: str,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed access token for ``sub`` in session ``session_id`` and its claims."""
        clash = REGISTERED_CLAIMS.intersection(extra or {})
        if clash:
            raise ValueError(f"extra claims may not override {sorted(clash)}")
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_s,
            "jti": secrets.token_urlsafe(16),
            "sid": session_id,
            "roles": list(roles),
        }
        token = jwt.encode(
            claims,
            self._private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._key.kid, "typ": "JWT"},
        )
        return token, claims


class TokenVerifier:
    """Checks access tokens against a fixed set of public keys."""

    def __init__(
        self,
        keys: Mapping[str, Mapping[str, Any]],
        issuer: str,
        audience: str,
        leeway_s: int = DEFAULT_LEEWAY_S,
    ) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for kid, jwk in keys.items():
            if jwk.get("kid", kid) != kid:
                raise ValueError(f"JWK under {kid!r} declares kid {jwk.get('kid')!r}")
            self._keys[kid] = public_key_from_jwk(jwk)
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._jws = jwt.PyJWS()

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, now: int) -> Claims | Rejected:
        """The token's claims if it is genuine and valid at ``now``, else why not."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return Rejected("malformed", "empty, oversized or not a string")
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            return Rejected("malformed", "not a compact JWS")
        if header.get("alg") != ALGORITHM:
            return Rejected("bad-algorithm", f"alg {header.get('alg')!r}")
        if not _ALLOWED_HEADER.issuperset(header) or header.get("typ", "JWT") != "JWT":
            return Rejected("malformed", "unexpected header parameters")
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self._keys:
            return Rejected("unknown-key", "missing kid" if kid is None else "unknown kid")
        try:
            decoded = self._jws.decode_complete(token, key=self._keys[kid], algorithms=[ALGORITHM])
        except InvalidSignatureError:
            return Rejected("bad-signature", "")
        except InvalidAlgorithmError:
            return Rejected("bad-algorithm", "")
        except (DecodeError, InvalidTokenError):
            return Rejected("malformed", "undecodable token")
        try:
            payload = json.loads(decoded["payload"])
        except ValueError:
            return Rejected("malformed", "payload is not JSON")
        if not isinstance(payload, dict):
            return Rejected("malformed", "payload is not an object")
        return self._check_claims(payload, now)

    def _check_claims(self, payload: dict[str, Any], now: int) -> Claims | Rejected:
        missing = [name for name in REQUIRED_CLAIMS if name not in payload]
        if missing:
            return Rejected("missing-claim", ",".join(missing))
        iat, nbf, exp = payload["iat"], payload["nbf"], payload["exp"]
        if not all(_is_number(v) for v in (iat, nbf, exp)):
            return Rejected("malformed", "time claims must be numbers")
        sub, jti, sid = payload["sub"], payload["jti"], payload.get("sid")
        if not (isinstance(sub, str) and sub and isinstance(jti, str) and jti):
            return Rejected("malformed", "sub and jti must be non-empty strings")
        if sid is not None and not isinstance(sid, str):
            return Rejected("malformed", "sid must be a string")
        roles = payload.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            return Rejected("malformed", "roles must be a list of strings")
        if payload["iss"] != self.issuer:
            return Rejected("wrong-issuer", "")
        aud = payload["aud"]
        audiences = (aud,) if isinstance(aud, str) else aud
        if not isinstance(audiences, list | tuple) or self.audience not in audiences:
            return Rejected("wrong-audience", "")
        if now >= exp + self.leeway_s:
            return Rejected("expired", "")
        if nbf > now + self.leeway_s or iat > now + self.leeway_s:
            return Rejected("not-yet-valid", "")
        return Claims(
            sub=sub,
            sid=sid,
            roles=tuple(roles),
            jti=jti,
            iss=payload["iss"],
            aud=aud if isinstance(aud, str) else tuple(aud),
            iat=iat,
            nbf=nbf,
            exp=exp,
            raw=payload,
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def new_opaque_token(prefix: str) -> str:
    """``<prefix>_`` followed by 256 random bits, base64url; store only ``token_hash``."""
    if not prefix.isascii() or not prefix.isalnum():
        raise ValueError("prefix must be ASCII letters and digits")
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_refresh_token() -> str:
    """A refresh token: ``rt_`` and 256 random bits."""
    return new_opaque_token("rt")


def token_hash(token: str) -> str:
    """SHA-256 hex of a token, the only form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
