"""Typed clients over a fake directory: which shard each call reaches, what comes back."""

from typing import Any

from actors.cart.model import user_cart_id
from actors.clients import ShardOps


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
