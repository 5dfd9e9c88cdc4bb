"""Secrets sealed at rest: AES-256-GCM under a master key that is never in the database.

What PostgreSQL holds for a secret column (the ES256 signing keys, TOTP secrets,
webhook secrets; ``SEALED_COLUMNS``) is ``agora-sealed:v1:<key id>:<base64url(
nonce || ciphertext || tag)>``. The additional data is the column's *context*
and the row's id, so a sealed value copied onto another row (another user's
TOTP secret, another webhook) fails authentication like any altered byte.

The master key comes from ``AGORA_MASTER_KEY`` (base64 of 32 bytes; in
production from a secret store or KMS-decrypted at start). On the embedded
defaults ``agora up`` creates ``var/run/master_key`` (mode 600). Older keys, to
read what they sealed, are in ``AGORA_MASTER_KEY_PREVIOUS`` (comma-separated)
or ``var/run/master_key.previous`` (one a line); ``agora keys rotate-master``
re-seals every row under the current key. Rows written before sealing existed
are plaintext: they are read as they are and sealed by ``agora up`` / ``agora
migrate`` (``reseal_all``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cluster.settings import Settings, get_settings

PREFIX = "agora-sealed:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "master_key"
PREVIOUS_FILE = "master_key.previous"

# The context of each kind of secret (bound into its authentication tag). Both
# MFA columns share one because confirming enrolment copies the pending secret
# over in SQL (cluster/adapters/accounts.py).
SIGNING_KEY = "signing_keys.private_pem"
MFA = "users.mfa"
WEBHOOK_SECRET = "webhooks.secret"  # noqa: S105 - a context name, not a secret
# (table, id column, secret column, context): every secret column we seal.
SEALED_COLUMNS = (
    ("signing_keys", "kid", "private_pem", SIGNING_KEY),
    ("users", "user_id", "mfa_secret", MFA),
    ("users", "user_id", "mfa_pending_secret", MFA),
    ("webhooks", "webhook_id", "secret", WEBHOOK_SECRET),
)


class SecretsError(RuntimeError):
    """A sealed secret cannot be opened, or no usable master key is configured."""


class UnknownMasterKey(SecretsError):
    """Sealed under a master key this process does not have (a wrong or missing key)."""


class TamperedSecret(SecretsError):
    """Authentication failed: the stored value was altered or moved from another row."""


def key_id(key: bytes) -> str:
    """A short, public name of a master key (it reveals nothing usable about the key)."""
    return hashlib.sha256(b"agora master key id\x00" + key).hexdigest()[:12]


def decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretsError(f"{where} is not base64") from exc
    if len(key) != KEY_BYTES:
        raise SecretsError(f"{where} must be {KEY_BYTES} bytes (base64), not {len(key)}")
    return key


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


@dataclass(frozen=True)
class MasterKeys:
    """The current master key (seals) and older ones (open what they sealed)."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    _by_id: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {key_id(k): k for k in self.previous}
        by_id[key_id(self.current)] = self.current
        object.__setattr__(self, "_by_id", by_id)

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext.encode(), context.encode())
        blob = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}{self.current_id}:{blob}"

    def open(self, stored: str, context: str) -> str:
        """The plaintext of a sealed value (a plaintext value is returned as it is)."""
        if not is_sealed(stored):
            return stored
        kid, sep, blob = stored[len(PREFIX) :].partition(":")
        if not sep:
            raise TamperedSecret(f"sealed {context} value is malformed")
        key = self._by_id.get(kid)
        if key is None:
            raise UnknownMasterKey(
                f"{context} was sealed with master key {kid}, which this process does not"
                f" have (it has {', '.join(sorted(self._by_id))}): AGORA_MASTER_KEY or"
                " var/run/master_key is wrong, or the previous key is missing"
            )
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            if len(raw) < NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise TamperedSecret(
                f"sealed {context} value failed authentication (altered, or copied from"
                " another row)"
            ) from exc
        return plain.decode()

    def needs_reseal(self, stored: str) -> bool:
        return not stored.startswith(f"{PREFIX}{self.current_id}:")


def _key_file(settings: Settings) -> Path:
    return settings.run_dir / KEY_FILE


def load_master_keys(settings: Settings) -> MasterKeys:
    """The master keys from the settings, else from the files ``agora up`` keeps in var/run."""
    if settings.master_key is not None:
        current = decode_key(settings.master_key.get_secret_value(), "AGORA_MASTER_KEY")
        listed = (
            settings.master_key_previous.get_secret_value() if settings.master_key_previous else ""
        )
        previous = [
            decode_key(t, "AGORA_MASTER_KEY_PREVIOUS") for t in listed.split(",") if t.strip()
        ]
        return MasterKeys(current, tuple(previous))
    path = _key_file(settings)
    if not path.exists():
        raise SecretsError(
            f"no master key: set AGORA_MASTER_KEY or run `agora up` (creates {path})"
        )
    current = decode_key(path.read_text(), str(path))
    old = path.with_name(PREVIOUS_FILE)
    lines = old.read_text().split() if old.exists() else []
    return MasterKeys(current, tuple(decode_key(t, str(old)) for t in lines))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file readable by its owner only, then move it into place."""
    staging = path.with_name(path.name + f".new-{os.getpid()}")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    staging.replace(path)


def ensure_master_key_file(settings: Settings) -> bool:
    """Create var/run/master_key (mode 600) unless AGORA_MASTER_KEY is set; True if created."""
    path = _key_file(settings)
    if settings.master_key is not None or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, new_key_text() + "\n")
    return True


def rotate_master_key_file(settings: Settings) -> MasterKeys:
    """A new var/run/master_key; the old one is appended to master_key.previous (kept: backups
    made before the rotation need it)."""
    if settings.master_key is not None:
        raise SecretsError(
            "AGORA_MASTER_KEY is set: put the new key there and the old one in"
            " AGORA_MASTER_KEY_PREVIOUS, restart, then run `agora keys rotate-master`"
        )
    path = _key_file(settings)
    old = path.read_text().strip() if path.exists() else ""
    if old:
        previous = path.with_name(PREVIOUS_FILE)
        kept = previous.read_text() if previous.exists() else ""
        _write_private(previous, kept + old + "\n")
    _write_private(path, new_key_text() + "\n")
    return load_master_keys(settings)


# --- the process's keys ----------------------------------------------------------

_loaded: MasterKeys | None = None


def master_keys(reload: bool = False) -> MasterKeys:
    """This process's master keys (loaded once from the settings)."""
    global _loaded
    if _loaded is None or reload:
        _loaded = load_master_keys(get_settings())
    return _loaded


def seal(plaintext: str, context: str, row_id: str) -> str:
    return master_keys().seal(plaintext, f"{context}:{row_id}")


def open_secret(stored: str, context: str, row_id: str) -> str:
    """Open a stored value; a key this process lacks is reloaded once (rotated meanwhile)."""
    try:
        return master_keys().open(stored, f"{context}:{row_id}")
    except UnknownMasterKey:
        return master_keys(reload=True).open(stored, f"{context}:{row_id}")


def open_optional(stored: str | None, context: str, row_id: str) -> str | None:
    return None if stored is None else open_secret(stored, context, row_id)


@dataclass(frozen=True)
class SecretOpener:
    """``opener(stored, row_id)``: a picklable opener for code outside cluster (a consumer
    actor in streams gets one injected); the keys are loaded in the process that calls it."""

    context: str

    def __call__(self, stored: str, row_id: str) -> str:
        return open_secret(stored, self.context, row_id)


async def reseal_all(conn: Any, keys: MasterKeys) -> dict[str, int]:
    """Seal every plaintext secret and re-seal those under an older key; counts per column.

    Each row is rewritten only if it still holds what was read (compare-and-set),
    so a concurrent write (an MFA enrolment) is never overwritten with an older value.
    """
    counts: dict[str, int] = {}
    current = f"{PREFIX}{keys.current_id}:%"
    # Table and column names are interpolated from SEALED_COLUMNS, constants of this
    # module; every value is a bind parameter.
    for table, id_column, column, context in SEALED_COLUMNS:
        rows = await conn.fetch(
            f"SELECT {id_column} AS id, {column} AS value FROM {table}"
            f" WHERE {column} IS NOT NULL AND {column} NOT LIKE $1",
            current,
        )
        done = 0
        for row in rows:
            plain = keys.open(row["value"], f"{context}:{row['id']}")
            status = await conn.execute(
                f"UPDATE {table} SET {column} = $3 WHERE {id_column} = $1"  # nosec B608
                f" AND {column} = $2",
                row["id"],
                row["value"],
                keys.seal(plain, f"{context}:{row['id']}"),
            )
            done += status == "UPDATE 1"
        counts[f"{table}.{column}"] = done
    return counts
