"""What every actor kind answers with, besides its own replies: the one ``Rejected``.

Rejections are values, failures are exceptions: a command the state refuses
("out of stock", "coupon expired", "not in cart") comes back as a ``Rejected``
with a stable ``code`` (the API maps each code to one HTTP status in
``serve.problems``) and a ``detail`` for people. ``available`` carries the
units a stock refusal could have had; ``errors`` names bad fields. ``MOVED``
is the one rejection no user sees: a shard answers it for a key it no longer
owns after a live rescale, with the ring to follow (``ring``: epoch, shard
count); the typed clients follow it and retry on the new owner.
"""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass(frozen=True)
class Rejected:
    """A refused command; ``code`` is stable, ``detail`` is for people."""

    code: str
    detail: str
    _: KW_ONLY
    available: int | None = None
    errors: tuple[FieldError, ...] = ()
    ring: tuple[int, int] | None = None


MOVED = "moved"


def now_ms() -> int:
    """The system clock in Unix milliseconds: the default clock injected into shells."""
    return int(time.time() * 1000)
