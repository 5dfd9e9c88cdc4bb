"""The ledger's Merkle tree: canonical leaves, sorted-pair nodes, the odd-node rule, proofs."""

from __future__ import annotations

import pytest
from eth_hash.auto import keccak

from ledger.merkle import (
    LeafDataError,
    MerkleTree,
    from_hex,
    hash_pair,
    leaf_data_for,
    leaf_hash,
    order_leaf_data,
    root_from_path,
    to_hex,
    verify,
)


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(leaf_data_for("test", f"k{i}", f"d{i}")) for i in range(n)]


def test_order_leaf_data_is_canonical() -> None:
    data = order_leaf_data("ord_1", 12990, "BRL", "ch_1", "2026-12-04T03:00:00.123Z")
    assert data == (
        "agora.order.v1|order_id=ord_1|total=12990 BRL|payment_id=ch_1"
        "|confirmed_at=2026-12-04T03:00:00.123Z"
    )
    assert leaf_hash(data) == keccak(data.encode())


@pytest.mark.parametrize(
    "args",
    [
        ("a|b", 1, "BRL", "p", "t"),
        ("a", 1, "BRL", "p=x", "t"),
        ("a", 1, "BRL", "p\n", "t"),
        ("", 1, "BRL", "p", "t"),
        ("a", -1, "BRL", "p", "t"),
        ("a", 1.5, "BRL", "p", "t"),
        ("a", True, "BRL", "p", "t"),
        ("a", 1, "brl", "p", "t"),
        ("a", 1, "REAL", "p", "t"),
    ],
)
def test_order_leaf_data_refuses_ambiguous_values(args) -> None:
    with pytest.raises(LeafDataError):
        order_leaf_data(*args)


def test_leaf_data_must_carry_the_prefix() -> None:
    with pytest.raises(LeafDataError):
        leaf_hash("x" * 64)


def test_one_leaf_is_its_own_root() -> None:
    (leaf,) = leaves(1)
    tree = MerkleTree.build([leaf])
    assert tree.root == leaf
    assert tree.proof(0) == []
    assert verify(leaf, [], tree.root)


def test_two_leaves_sorted_pair() -> None:
    a, b = leaves(2)
    tree = MerkleTree.build([a, b])
    assert tree.root == keccak(min(a, b) + max(a, b))
    assert tree.root == MerkleTree.build([b, a]).root  # the pair is order-free
    assert tree.proof(0) == [b] and tree.proof(1) == [a]


def test_odd_node_is_promoted_not_duplicated() -> None:
    a, b, c = leaves(3)
    tree = MerkleTree.build([a, b, c])
    assert tree.root == hash_pair(hash_pair(a, b), c)
    assert tree.proof(2) == [hash_pair(a, b)]  # no sibling at the bottom level
    assert tree.root != MerkleTree.build([a, b, c, c]).root


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 16, 33, 255, 256, 1000])
def test_every_path_verifies(n: int) -> None:
    items = leaves(n)
    tree = MerkleTree.build(items)
    for i, leaf in enumerate(items):
        path = tree.proof(i)
        assert len(path) <= max(1, (n - 1).bit_length())
        assert verify(leaf, path, tree.root)


@pytest.mark.parametrize("n", [2, 3, 16, 33])
def test_tampering_fails(n: int) -> None:
    items = leaves(n)
    tree = MerkleTree.build(items)
    for i, leaf in enumerate(items):
        path = tree.proof(i)
        flipped_leaf = bytes([leaf[0] ^ 1]) + leaf[1:]
        assert not verify(flipped_leaf, path, tree.root)
        for j in range(len(path)):
            bad = list(path)
            bad[j] = bytes([bad[j][0] ^ 0x80]) + bad[j][1:]
            assert not verify(leaf, bad, tree.root)
        assert not verify(leaf, path[:-1], tree.root)
        other = items[(i + 1) % n]
        assert not verify(other, path, tree.root) or other == leaf


def test_large_tree_matches_a_reference_fold() -> None:
    items = leaves(4096)
    tree = MerkleTree.build(items)
    level = items
    while len(level) > 1:
        level = [hash_pair(level[k], level[k + 1]) for k in range(0, len(level), 2)]
    assert tree.root == level[0]
    assert verify(items[4095], tree.proof(4095), tree.root)
    assert len(tree.proof(0)) == 12


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        MerkleTree.build([])
    with pytest.raises(ValueError):
        MerkleTree.build([b"short"])
    with pytest.raises(IndexError):
        MerkleTree.build(leaves(2)).proof(2)
    assert not verify(leaves(1)[0], [b"short"], b"\x00" * 32)
    (leaf,) = leaves(1)
    assert from_hex(to_hex(leaf)) == leaf
    with pytest.raises(ValueError):
        from_hex(leaf.hex())
    with pytest.raises(ValueError):
        from_hex("0x1234")
    assert root_from_path(leaf, []) == leaf
