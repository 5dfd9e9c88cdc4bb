"""Typed clients of the shard actors: the only callers of ``.remote(`` on a shard.

Callers (API routes, the order saga's port adapters, the CLI) hold a
``Directory`` and call these methods; each routes the key to its shard, makes
one Ray call, and returns the shard's typed reply (frozen values, or the one
``actors.messages.Rejected``). Nobody else computes shard names or calls
``.remote(`` on a shard handle.
"""

from __future__ import annotations

from typing import Any


class _Client:
    def __init__(self, directory: Any) -> None:
        self.directory = directory


class CartClient(_Client):
    """Carts: lines, coupon, merge on login, clear after an order."""


class InventoryClient(_Client):
    """Stock: reservations (one call per shard for many lines), commits, releases, admin."""


class SessionClient(_Client):
    """Refresh-token families and sessions of a user."""


class OrderClient(_Client):
    """Checkout sagas and order reads and operations."""
