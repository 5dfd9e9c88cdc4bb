"""``agora scale ... --node ID``: the placement hook of ``cluster.scaling.rescale`` and the
command line's checks, with Ray forbidden.

``rescale`` runs end to end on the in-process cart shells of ``test_rescale`` (fake shard
ops, the real routing and handoff); the command line runs with Ray's calls replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
import ray

from actors.clients import CartClient, ShardOps
from actors.directory import RingSpec, shard_name
from cluster import cli, infra, scaling
from cluster.scaling import ScaleError, check_node, rescale
from cluster.settings import Settings
from tests.unit.test_rescale import World, keys_moving, quantity

NODE = "a" * 56
OTHER = "b" * 56


class Placements:
    """A ``place`` hook that records each call with what the world looked like then."""

    def __init__(self, world: World, fail: bool = False) -> None:
        self.world, self.fail = world, fail
        self.calls: list[tuple[list[str], RingSpec | None, set[str]]] = []

    async def __call__(self, names: list[str]) -> None:
        self.calls.append((list(names), self.world.rings.specs.get("cart"), set(self.world.shells)))
        if self.fail:
            raise ScaleError("agora:cart:2 could not be placed on node x")
        for name in names:  # "created on the node": the shell exists before anyone pings it
            self.world.shell(name)


async def run(world: World, target: int, place: Any) -> Any:
    return await rescale(
        "cart",
        target,
        rings=world.rings,
        connect=lambda: contextlib.nullcontext(None),
        ops=ShardOps(world.directory()),
        default_shards=world.settings.cart_shards,
        place=place,
    )


def names(*indexes: int) -> list[str]:
    return [shard_name("cart", i) for i in indexes]


# --- the hook in scaling.rescale --------------------------------------------------


async def test_the_hook_gets_exactly_the_added_shards_before_the_ring_is_stored():
    world = World(2)
    carts = CartClient(world.directory())
    moving = keys_moving(2, 4, 5)
    for key in moving:
        await carts.add_item(key, "SKU-1", "Mug", 100, 1)
    place = Placements(world)
    handoff = await run(world, 4, place)
    assert len(place.calls) == 1
    added, ring_then, shells_then = place.calls[0]
    assert added == names(2, 3)
    assert ring_then is None  # nothing stored yet (epoch 0: the settings' count)
    assert not shells_then & set(added)  # and nobody had touched the new shards
    assert world.rings.specs["cart"] == RingSpec("cart", 1, 4)
    assert (handoff.before, handoff.after, handoff.moved_keys) == (2, 4, 5)
    for key in moving:  # the keys really moved to the placed shards, and stayed whole
        assert world.directory().shard_for("cart", key) in added
        assert quantity(await carts.get(key), "SKU-1") == 1

    await run(world, 6, place)  # from a stored ring: only the shards beyond it
    assert place.calls[1][0] == names(4, 5)
    assert place.calls[1][1] == RingSpec("cart", 1, 4)  # still the old ring when placed


async def test_no_hook_call_on_a_scale_down_or_when_already_at_the_target():
    world = World(4)
    place = Placements(world)
    handoff = await run(world, 4, place)
    assert "already 4 shards" in handoff.describe() and not place.calls
    await run(world, 2, place)
    assert not place.calls and world.rings.specs["cart"] == RingSpec("cart", 1, 2)
    await run(world, 3, place)  # up again: shard 2 exists (idle); the hook decides, not rescale
    assert [c[0] for c in place.calls] == [names(2)]


async def test_a_resumed_rescale_names_the_shards_of_the_interrupted_one():
    world = World(2)
    world.rings.specs["cart"] = RingSpec("cart", 1, 4, previous=2)
    place = Placements(world)
    with pytest.raises(ScaleError, match="agora scale cart=4"):
        await run(world, 5, place)
    assert not place.calls  # refused before anything was placed
    await run(world, 4, place)
    assert [c[0] for c in place.calls] == [names(2, 3)]
    assert world.rings.specs["cart"] == RingSpec("cart", 1, 4)


async def test_a_failed_placement_changes_nothing():
    world = World(2)
    place = Placements(world, fail=True)
    with pytest.raises(ScaleError, match="could not be placed"):
        await run(world, 4, place)
    assert "cart" not in world.rings.specs
    assert not set(names(2, 3)) & set(world.shells)


def test_check_node_accepts_only_a_live_node():
    nodes = [{"NodeID": NODE, "Alive": True}, {"NodeID": OTHER, "Alive": False}]
    assert check_node(NODE, nodes) == NODE
    with pytest.raises(ScaleError, match=f"{OTHER}: that Ray node is dead .*{NODE}"):
        check_node(OTHER, nodes)
    with pytest.raises(ScaleError, match="no such Ray node"):
        check_node("c" * 56, nodes)
    with pytest.raises(ScaleError, match=r"live nodes: none"):
        check_node(NODE, [{"NodeID": NODE, "Alive": False}][1:])


# --- the command line -------------------------------------------------------------


@pytest.fixture
def running(monkeypatch, tmp_path):
    """``agora scale`` against a "running" system whose Ray calls are fakes; any database
    access fails the test unless the test allows it."""
    settings = Settings(var_dir=tmp_path)
    monkeypatch.setattr(infra, "ray_running", lambda _s: True)
    monkeypatch.setattr(cli, "connect_ray", lambda _s: None)
    monkeypatch.setattr(
        ray, "nodes", lambda: [{"NodeID": NODE, "Alive": True}, {"NodeID": OTHER, "Alive": False}]
    )

    async def no_database(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("nothing may change")

    monkeypatch.setattr(cli.db, "connect", no_database)
    monkeypatch.setattr(cli, "scale_api", lambda _n: pytest.fail("api must not be redeployed"))
    return settings


@pytest.mark.parametrize(
    ("words", "node", "needle"),
    [
        (["cart=6"], "c" * 56, "no such Ray node"),
        (["cart=6", "api=2"], OTHER, "that Ray node is dead"),
        (["api=2"], NODE, "api= alone adds none"),
    ],
)
def test_scale_refuses_a_bad_node_before_changing_anything(running, capsys, words, node, needle):
    assert cli.scale(running, words, node=node) == 2
    out = capsys.readouterr().out
    assert needle in out and out.startswith("agora scale: ")


def test_node_with_only_api_is_refused_even_when_nothing_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(infra, "ray_running", lambda _s: pytest.fail("checked before"))
    assert cli.scale(Settings(var_dir=tmp_path), ["api=3"], node=NODE) == 2
    assert "api= alone" in capsys.readouterr().out


def test_the_flag_reaches_scale(monkeypatch, tmp_path):
    seen: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(var_dir=tmp_path))
    monkeypatch.setattr(cli.rayenv, "apply", lambda: None)
    monkeypatch.setattr(cli, "scale", lambda _s, words, node=None: seen.append((words, node)) or 0)
    assert cli.main(["scale", "cart=8", "inventory=6", "--node", NODE]) == 0
    assert cli.main(["scale", "api=2"]) == 0
    assert seen == [(["cart=8", "inventory=6"], NODE), (["api=2"], None)]


def test_a_live_node_is_passed_to_rescale_as_the_placement_hook(running, monkeypatch, capsys):
    class Conn:
        async def close(self) -> None:
            pass

    class Rings:
        async def load_all(self, _conn: Any) -> dict[str, RingSpec]:
            return {}

    async def connect(*_a: Any, **_k: Any) -> Conn:
        return Conn()

    hooks: list[Any] = []

    async def fake_rescale(kind: str, target: int, **kwargs: Any) -> Any:
        hooks.append(kwargs["place"])
        return SimpleNamespace(describe=lambda: f"{kind}: -> {target}")

    monkeypatch.setattr(cli.db, "connect", connect)
    monkeypatch.setattr(cli, "service_urls", lambda _s: SimpleNamespace(database="pg://fake"))
    monkeypatch.setattr(cli, "PostgresRings", Rings)
    monkeypatch.setattr(scaling, "rescale", fake_rescale)
    assert cli.scale(running, ["cart=6", "inventory=5"], node=NODE) == 0
    assert len(hooks) == 2 and all(callable(h) for h in hooks)
    assert cli.scale(running, ["cart=6"]) == 0
    assert hooks[-1] is None  # without --node, Ray places new shards as before

    # The hook: new names are created on the node; an existing shard is left where it runs.
    placed: list[tuple[str, str]] = []
    existing = {shard_name("cart", 5): OTHER}

    def get_actor(name: str, namespace: str) -> Any:
        assert namespace == running.ray_namespace
        if name not in existing:
            raise ValueError(name)
        return SimpleNamespace(stats=SimpleNamespace(remote=lambda: existing[name]))

    monkeypatch.setattr(ray, "get_actor", get_actor)
    monkeypatch.setattr(ray, "get", lambda where, timeout: {"node_id": where})
    monkeypatch.setattr(cli, "place_shard", lambda s, name, node: placed.append((name, node)))
    capsys.readouterr()
    asyncio.run(hooks[0](names(4, 5)))
    assert placed == [(shard_name("cart", 4), NODE)]
    out = capsys.readouterr().out
    assert f"agora:cart:4: created on node {NODE}" in out
    assert f"agora:cart:5: exists already on node {OTHER}" in out and "not moved" in out
    assert out.index("agora:cart:4:") < out.index("agora:cart:5:")  # one line each, in order

    def cannot(_s: Any, name: str, node: str) -> None:
        raise RuntimeError(f"{name} could not be placed on node {node}")

    monkeypatch.setattr(cli, "place_shard", cannot)
    with pytest.raises(ScaleError, match="cart was not rescaled"):
        asyncio.run(hooks[0](names(4)))
