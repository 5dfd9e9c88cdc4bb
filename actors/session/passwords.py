"""Passwords and e-mail addresses: argon2id hashing, the password policy, address canonical form.

Hashing parameters follow OWASP's Password Storage Cheat Sheet for argon2id
(m = 19 MiB, t = 2, p = 1):

* argon2id is memory-hard, so each guess costs an attacker 19 MiB of RAM as well as
  time; that is what makes GPU and ASIC cracking of a leaked table expensive.
* On the 2-core production box one hash takes tens of milliseconds and 19 MiB, so a
  burst of logins cannot exhaust memory and a login stays well under the latency
  budget. ``p = 1`` because a login must not take both cores from other requests.
* Raising the cost later is safe: ``needs_rehash`` tells the login path to rehash
  with the new parameters while it still holds the plaintext.

Passwords are NFKC-normalised before hashing (NIST SP 800-63B 5.1.1.2), so the same
password typed on keyboards that produce composed or decomposed characters matches.

The policy follows OWASP ASVS v4 section 2.1: a length window counted in Unicode code
points, no composition rules, and a blocklist of common passwords
(``common_passwords.txt``, built by ``make_common_passwords``).
"""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from importlib import resources

import argon2
from argon2.exceptions import VerificationError

TIME_COST = 2
MEMORY_COST_KIB = 19_456
PARALLELISM = 1
HASH_LEN = 32
SALT_LEN = 16

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 128

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_DOMAIN_LABEL_LENGTH = 63

COMMON_PASSWORDS_FILE = "common_passwords.txt"

_SPACE_RUNS = re.compile(r"\s{2,}")
# Characters that RFC 5322 allows only inside a quoted local part; quoted local parts
# are refused because no real mailbox needs one and they complicate uniqueness.
_EMAIL_FORBIDDEN = frozenset('()<>[]:;,\\"')
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


class PasswordHasher:
    """argon2id with the module's parameters; verification never raises for bad input."""

    def __init__(
        self,
        *,
        time_cost: int = TIME_COST,
        memory_cost_kib: int = MEMORY_COST_KIB,
        parallelism: int = PARALLELISM,
    ) -> None:
        self._params = (time_cost, memory_cost_kib, parallelism)
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=HASH_LEN,
            salt_len=SALT_LEN,
            type=argon2.Type.ID,
        )

    def hash(self, password: str) -> str:
        """The PHC-format argon2id hash of the NFKC form of ``password``, with a fresh salt."""
        return self._hasher.hash(_nfkc(password))

    def verify(self, stored_hash: str, password: str) -> bool:
        """True only if ``password`` matches; a mismatch or an unparsable hash is False."""
        try:
            return self._hasher.verify(stored_hash, _nfkc(password))
        except (VerificationError, ValueError):
            # ValueError covers InvalidHashError and a non-ASCII stored hash.
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if the hash was made with other parameters (or cannot be read at all)."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except ValueError:
            return True

    def verify_dummy(self, password: str) -> bool:
        """Spend the time of one verification and return False.

        Login calls this when no account has the given e-mail, so the response time
        does not reveal which addresses are registered.
        """
        self.verify(dummy_hash(*self._params), password)
        return False


@functools.cache
def dummy_hash(
    time_cost: int = TIME_COST,
    memory_cost_kib: int = MEMORY_COST_KIB,
    parallelism: int = PARALLELISM,
) -> str:
    """A hash of a random throw-away password, made once per parameter set on first use."""
    hasher = PasswordHasher(
        time_cost=time_cost, memory_cost_kib=memory_cost_kib, parallelism=parallelism
    )
    return hasher.hash(secrets.token_urlsafe(32))


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped blocklist, lowercase, loaded on first use."""
    text = resources.files(__package__).joinpath(COMMON_PASSWORDS_FILE).read_text("utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def check_password(
    password: str, *, email: str | None = None, name: str | None = None
) -> str | None:
    """None if ``password`` meets the policy, otherwise a reason to show the user.

    Length is counted in code points of the NFKC form; for the minimum, runs of
    whitespace count once (ASVS 2.1.1), so padding with spaces does not help.
    """
    normalised = _nfkc(password)
    if len(normalised) > MAX_PASSWORD_LENGTH:
        return f"Password must be at most {MAX_PASSWORD_LENGTH} characters long."
    if len(_SPACE_RUNS.sub(" ", normalised)) < MIN_PASSWORD_LENGTH:
        return f"Password must be at least {MIN_PASSWORD_LENGTH} characters long."
    folded = normalised.casefold()
    if email is not None and folded in _email_variants(email):
        return "Password must not be your e-mail address."
    if name is not None and folded in _name_variants(name):
        return "Password must not be your name."
    if normalised.lower() in common_passwords():
        return "This password is too common; choose one that is harder to guess."
    return None


def _email_variants(email: str) -> set[str]:
    address = _nfkc(email).strip().casefold()
    local = address.rpartition("@")[0]
    return {v for v in (address, local) if v}


def _name_variants(name: str) -> set[str]:
    folded = _nfkc(name).strip().casefold()
    return {v for v in (folded, _SPACE_RUNS.sub(" ", folded), "".join(folded.split())) if v}


def normalise_email(email: str) -> str | None:
    """The canonical form of an address, or None if it is not a plausible mailbox.

    The whole address is lowercased, local part included. RFC 5321 lets a server
    treat ``John`` and ``john`` as different mailboxes, but no mainstream provider
    does, and case-sensitive accounts would let one person register twice or be
    locked out by a capital letter. Internationalised domains are stored in their
    ASCII (IDNA) form so both spellings of one domain compare equal.
    """
    address = _nfkc(email).strip().lower()
    if address.count("@") != 1:
        return None
    local, domain = address.split("@")
    if not _plausible_local_part(local):
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    result = f"{local}@{ascii_domain}"
    if len(result.encode("utf-8")) > MAX_EMAIL_LENGTH:
        return None
    return result


def _plausible_local_part(local: str) -> bool:
    if not local or len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return not any(ch in _EMAIL_FORBIDDEN or ch.isspace() or not ch.isprintable() for ch in local)


def _ascii_domain(domain: str) -> str | None:
    if not domain or any(ch.isspace() or not ch.isprintable() for ch in domain):
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(
        len(label) <= MAX_DOMAIN_LABEL_LENGTH and _DOMAIN_LABEL.fullmatch(label) for label in labels
    ):
        return None
    return domain


def mask_email(email: str) -> str:
    """A form safe for logs: first character of the local part, then ``***@domain``."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
