from collections import Counter

import pytest

from actors.directory import HashRing, shard_name


def test_same_key_always_maps_to_same_node():
    ring = HashRing([shard_name("cart", i) for i in range(4)])
    again = HashRing([shard_name("cart", i) for i in range(4)])
    for i in range(1000):
        assert ring.node_for(f"cart-{i}") == again.node_for(f"cart-{i}")


def test_keys_spread_evenly_over_nodes():
    nodes = [shard_name("cart", i) for i in range(8)]
    ring = HashRing(nodes, vnodes=128)
    counts = Counter(ring.node_for(f"anon:{i:06d}") for i in range(40_000))
    assert set(counts) == set(nodes)
    expected = 40_000 / 8
    assert max(counts.values()) < expected * 1.25
    assert min(counts.values()) > expected * 0.75


def test_adding_a_node_moves_only_its_share_of_keys():
    before = HashRing([shard_name("cart", i) for i in range(4)], vnodes=128)
    after = HashRing([shard_name("cart", i) for i in range(5)], vnodes=128)
    keys = [f"k{i}" for i in range(20_000)]
    moved = [k for k in keys if before.node_for(k) != after.node_for(k)]
    assert all(after.node_for(k) == "agora:cart:4" for k in moved)
    assert 0.12 < len(moved) / len(keys) < 0.28


def test_ring_rejects_no_nodes():
    with pytest.raises(ValueError):
        HashRing([])
