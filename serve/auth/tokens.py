"""Access tokens (ES256 JWTs) and opaque refresh/MFA tokens (keys: ``actors.session.keyring``).

Verification trusts nothing in a token's header except ``kid``, which only selects
among keys we configured: the algorithm is pinned to ES256 (so ``none``, HS256 keyed
with the public key, RS256 and friends all fail), ``jku``/``jwk``/``x5u`` are never
followed, and the time checks use the ``now`` the caller passes, so tests need no
clock patching. A refused token is a ``Rejected`` value with a stable code.

Refresh tokens and other opaque tokens are random strings that are stored only as
their SHA-256 (``token_hash``); 256 random bits need no slow hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
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
from actors.session.keyring import ALGORITHM, SigningKey, jwks, public_key_from_jwk

__all__ = ["Claims", "Rejected", "TokenIssuer", "TokenVerifier", "jwks", "token_hash"]

DEFAULT_LIFETIME_S = 900
DEFAULT_LEEWAY_S = 30
# Our tokens are a few hundred bytes; refusing huge input early bounds parsing work.
MAX_TOKEN_LENGTH = 8192

REQUIRED_CLAIMS = ("exp", "iat", "nbf", "iss", "aud", "sub", "jti")
REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid", "roles"})
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})

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
