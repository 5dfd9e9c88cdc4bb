"""Leaves and the Merkle tree of a ledger batch (pure: no I/O, no clock).

Leaf data (canonical, UTF-8). An order's leaf is the string::

    agora.order.v1|order_id=<id>|total=<integer minor units> <ISO 4217 code>
        |payment_id=<id>|confirmed_at=<UTC ISO 8601 with ms and Z>

(one line, no spaces around ``|``), for example ``agora.order.v1|order_id=0190...
|total=12990 BRL|payment_id=ch_1|confirmed_at=2026-12-04T03:00:00.123Z``.
The total is in integer minor units (centavos for BRL); a payment id of
``none`` means the event named none.
Fields come in that fixed order, ``|`` separates them and no value may hold
``|``, ``=`` or a control character. Any other kind of leaf (the audit log's
chain head, see ``leaf_data_for``) is ``agora.<kind>.v1|key=<key>|data=<data>``.
Every leaf data starts with ``agora.``: it is never the 64 raw bytes of an
inner node, so an inner node cannot be passed off as a leaf.

Hashes. ``leaf = keccak256(leaf_data)``; an inner node is ``keccak256(min(a, b)
|| max(a, b))`` (children sorted byte-wise, the OpenZeppelin ``MerkleProof``
convention), so a proof is just the list of siblings from the leaf up, with
no left/right flags, and ``MerkleProof.verify`` accepts it on chain.

Odd node rule. Leaves stay in batch order; at each level nodes are paired
left to right, and a last node without a partner is promoted unchanged to the
next level (never hashed with itself, so no duplicated-leaf ambiguity). Its
proof simply has no sibling for that level. A tree of one leaf has
``root == leaf`` and an empty path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_hash.auto import keccak

LEAF_PREFIX = "agora."
ORDER_LEAF_VERSION = "agora.order.v1"
_FORBIDDEN = set("|=") | {chr(c) for c in range(32)} | {"\x7f"}


class LeafDataError(ValueError):
    """A value cannot go into canonical leaf data."""


def _check(field: str, value: str) -> str:
    if not value or any(ch in _FORBIDDEN for ch in value):
        raise LeafDataError(f"{field} is empty or holds '|', '=' or a control character")
    return value


def order_leaf_data(
    order_id: str, total_minor: int, currency: str, payment_id: str, confirmed_at: str
) -> str:
    """The canonical leaf data of a confirmed order (see the module docstring)."""
    if isinstance(total_minor, bool) or not isinstance(total_minor, int) or total_minor < 0:
        raise LeafDataError("total must be a non-negative integer of minor units")
    if len(currency) != 3 or not currency.isascii() or not currency.isupper():
        raise LeafDataError("currency must be an ISO 4217 code such as BRL")
    return (
        f"{ORDER_LEAF_VERSION}|order_id={_check('order_id', order_id)}"
        f"|total={total_minor} {currency}"
        f"|payment_id={_check('payment_id', payment_id)}"
        f"|confirmed_at={_check('confirmed_at', confirmed_at)}"
    )


def leaf_data_for(kind: str, key: str, data: str) -> str:
    """Leaf data of another kind (audit chain heads): ``agora.<kind>.v1|key=..|data=..``."""
    if not kind.isascii() or not kind.replace("_", "").isalnum():
        raise LeafDataError("kind must be ASCII letters, digits or '_'")
    return f"{LEAF_PREFIX}{kind}.v1|key={_check('key', key)}|data={_check('data', data)}"


def leaf_hash(leaf_data: str) -> bytes:
    """``keccak256`` of the UTF-8 leaf data."""
    if not leaf_data.startswith(LEAF_PREFIX):
        raise LeafDataError(f"leaf data must start with {LEAF_PREFIX!r}")
    return bytes(keccak(leaf_data.encode("utf-8")))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """An inner node: the two children sorted byte-wise, concatenated, hashed."""
    return bytes(keccak(a + b if a <= b else b + a))


@dataclass(frozen=True)
class MerkleTree:
    """Every level of the tree, ``levels[0]`` the leaves and ``levels[-1] == [root]``."""

    levels: tuple[tuple[bytes, ...], ...]

    @classmethod
    def build(cls, leaves: Sequence[bytes]) -> MerkleTree:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for leaf in leaves:
            if len(leaf) != 32:
                raise ValueError("every leaf is a 32-byte hash")
        levels = [tuple(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            above = [hash_pair(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])  # the odd node is promoted unchanged
            levels.append(tuple(above))
        return cls(tuple(levels))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def __len__(self) -> int:
        return len(self.levels[0])

    def proof(self, index: int) -> list[bytes]:
        """The siblings of leaf ``index`` from the bottom up (levels with none are skipped)."""
        if not 0 <= index < len(self):
            raise IndexError(f"leaf {index} not in a tree of {len(self)}")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path

    def proofs(self) -> list[list[bytes]]:
        return [self.proof(i) for i in range(len(self))]


def root_from_path(leaf: bytes, path: Sequence[bytes]) -> bytes:
    node = leaf
    for sibling in path:
        if len(sibling) != 32:
            raise ValueError("every sibling is a 32-byte hash")
        node = hash_pair(node, sibling)
    return node


def verify(leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``path`` leads from ``leaf`` to ``root``."""
    try:
        return root_from_path(leaf, path) == root
    except ValueError:
        return False


def to_hex(value: bytes) -> str:
    return "0x" + value.hex()


def from_hex(value: str, length: int | None = 32) -> bytes:
    """``0x``-prefixed hex to bytes; ValueError unless it is that (and ``length`` bytes)."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError("expected a 0x-prefixed hex string")
    raw = bytes.fromhex(value[2:])
    if length is not None and len(raw) != length:
        raise ValueError(f"expected {length} bytes, got {len(raw)}")
    return raw
