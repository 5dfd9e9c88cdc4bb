"""Opaque keyset cursors for every list: base64url of ``{"after": <last key>}``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from serve.problems import Problem


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": key}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The key a cursor names; a cursor this API did not issue is a 400."""
    if cursor is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        after = data["after"]
        if not isinstance(after, str) or len(after) > 64:
            raise ValueError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(400, "invalid-cursor", "The cursor is not one this API issued.") from exc


def page(rows: list[Any], limit: int, key: str) -> tuple[list[Any], str | None]:
    """Rows fetched with ``LIMIT limit + 1`` → (this page's rows, the next cursor or None)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1][key]) if more else None
