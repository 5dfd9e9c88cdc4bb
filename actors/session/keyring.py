"""The ES256 key ring: signing key pairs, their RFC 7638 ids, rows and the public JWKS.

Pure (no I/O, time passed in): ``cluster.adapters.signing_keys`` stores the
keys, ``serve.auth.tokens`` signs and verifies with them, and the ``agora``
command line creates and rotates them without importing the HTTP layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
CURVE = "P-256"
_PUBLIC_JWK_MEMBERS = ("kty", "crv", "x", "y", "kid", "use", "alg")


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
