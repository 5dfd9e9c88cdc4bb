"""Typed clients over a fake directory: which shard each call reaches, what comes back."""

import time
from typing import Any

import pytest

from actors import clients
from actors.cart.model import user_cart_id
from actors.clients import CartClient, ShardOps
from actors.messages import MOVED, Rejected


class _Method:
    def __init__(self, reply: Any, calls: list[str], label: str) -> None:
        self.reply, self.calls, self.label = reply, calls, label

    async def _answer(self) -> Any:
        self.calls.append(self.label)
        return self.reply

    def remote(self) -> Any:
        return self._answer()


class _Shard:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.ping = _Method(name, calls, f"ping {name}")
        self.stats = _Method({"name": name, "resident": len(name)}, calls, f"stats {name}")


class _Directory:
    def __init__(self, kinds: dict[str, int]) -> None:
        self.kinds = kinds
        self.calls: list[str] = []
        self.shards: dict[str, _Shard] = {}

    def shard_names(self, kind: str) -> list[str]:
        return [f"agora:{kind}:{i}" for i in range(self.kinds[kind])]

    def handle(self, name: str) -> _Shard:
        return self.shards.setdefault(name, _Shard(name, self.calls))

    def all_handles(self, kind: str) -> list[_Shard]:
        return [self.handle(name) for name in self.shard_names(kind)]


async def test_shard_ops_reach_every_shard_of_one_kind_only():
    directory = _Directory({"cart": 3, "order": 2})
    ops = ShardOps(directory)
    assert await ops.ping("cart") == ["agora:cart:0", "agora:cart:1", "agora:cart:2"]
    stats = await ops.stats_of("order")
    assert [s["name"] for s in stats] == ["agora:order:0", "agora:order:1"]
    assert await ops.stats("agora:cart:1") == {"name": "agora:cart:1", "resident": 12}
    assert sorted(directory.calls) == sorted(
        [f"ping agora:cart:{i}" for i in range(3)]
        + ["stats agora:order:0", "stats agora:order:1", "stats agora:cart:1"]
    )


def test_a_signed_in_shoppers_cart_id_is_the_stored_form():
    # Carts are persisted under this id: changing the rule orphans every saved cart.
    assert user_cart_id("u-42") == "user:u-42"
    assert user_cart_id("u-42") != user_cart_id("u-43")


class _BehindShard:
    """A shard still on the older ring for ``behind_s``: it answers "moved", naming a ring
    the caller already has, until its ``adopt_ring`` has run (late under load)."""

    def __init__(self, behind_s: float) -> None:
        self.until = time.monotonic() + behind_s
        self.asked = 0
        self.call = self

    def remote(self, method: str, key: str, *args: Any) -> Any:
        return self._answer(method, key)

    async def _answer(self, method: str, key: str) -> Any:
        self.asked += 1
        if time.monotonic() < self.until:
            return Rejected(MOVED, f"{key} is on another shard", ring=(1, 2))
        return f"{method} {key}"


class _RingDirectory:
    def __init__(self, shard: _BehindShard) -> None:
        self.shard = shard

    def get(self, kind: str, key: str) -> _BehindShard:
        return self.shard

    def adopt(self, kind: str, epoch: int, shards: int) -> bool:
        return False  # the caller already follows (1, 2)


async def test_a_shard_behind_the_ring_for_seconds_is_waited_for_not_failed():
    # 2 s behind: more than eight growing pauses (1.6 s), within the 5 s budget.
    shard = _BehindShard(2.0)
    started = time.monotonic()
    assert await CartClient(_RingDirectory(shard)).get("c-1") == "view c-1"
    assert 2.0 <= time.monotonic() - started < clients.MOVED_BUDGET_S
    assert shard.asked < 20  # paused between asks, not spinning


async def test_a_key_still_moving_after_the_budget_is_unavailable(monkeypatch):
    monkeypatch.setattr(clients, "MOVED_BUDGET_S", 0.3)
    shard = _BehindShard(60.0)
    started = time.monotonic()
    with pytest.raises(clients.ShardMoved, match="cart c-1: still moving"):
        await CartClient(_RingDirectory(shard)).get("c-1")
    assert time.monotonic() - started < 1.0
