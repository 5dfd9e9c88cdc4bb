"""Second factor: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps) and one-time recovery codes.

``verify_code`` returns the time step it matched; the caller stores it and passes it
back as ``last_used_step`` so a code, or any older one, is never accepted twice.

Recovery codes use Crockford's base32 alphabet (no i, l, o, u), ten symbols = 50 bits,
shown as ``xxxx-xxxx-xx``; on input, o/i/l are read as 0/1/1 the way Crockford
decoding does. They are stored only as ``hash_recovery_code``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets

import pyotp
import segno

ISSUER = "Agora"
DIGITS = 6
STEP_S = 30
ALLOWED_DRIFT_STEPS = 1
SECRET_BASE32_CHARS = 32

RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_GROUPS = (4, 4, 2)
RECOVERY_CODE_BITS = 5 * sum(RECOVERY_GROUPS)

_CODE = re.compile(r"[0-9]{6}", re.ASCII)
_CROCKFORD_ALIASES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_SEPARATORS = re.compile(r"[\s\-]+")


def new_secret() -> str:
    """A fresh shared secret: 160 random bits as 32 base32 characters."""
    return pyotp.random_base32(SECRET_BASE32_CHARS)


def provisioning_uri(secret: str, email: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app imports (label ``issuer:email``)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=email, issuer_name=issuer
    )


def qr_svg(uri: str, scale: int = 4) -> str:
    """A standalone SVG QR code of ``uri`` (with namespace, without XML declaration)."""
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(
        buffer, kind="svg", scale=scale, xmldecl=False, svgns=True, nl=False
    )
    return buffer.getvalue().decode("utf-8")


def verify_code(secret: str, code: str, now: int, last_used_step: int | None) -> int | None:
    """The time step ``code`` belongs to, or None if it is wrong, too old or already used.

    Accepts the current step and one step either side for clock drift, but only steps
    after ``last_used_step``.
    """
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = now // STEP_S
    for step in range(current - ALLOWED_DRIFT_STEPS, current + ALLOWED_DRIFT_STEPS + 1):
        if step < 0 or (last_used_step is not None and step <= last_used_step):
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes(n: int = 10) -> list[str]:
    """``n`` distinct one-time codes like ``7k2m-q9xd-4t``, 50 random bits each."""
    codes: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n:
        code = "-".join(
            "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(size))
            for size in RECOVERY_GROUPS
        )
        if code not in codes:
            codes.add(code)
            ordered.append(code)
    return ordered


def normalise_recovery_code(code: str) -> str:
    """The comparable form of a typed code: lowercase, no spaces or dashes, o/i/l read as 0/1."""
    return _SEPARATORS.sub("", code.strip().lower()).translate(_CROCKFORD_ALIASES)


def hash_recovery_code(code: str) -> str:
    """SHA-256 hex of the normalised code, the only form in which it is stored."""
    return hashlib.sha256(normalise_recovery_code(code).encode("utf-8")).hexdigest()
