"""Live rescaling of the shard kinds (``agora scale cart=8 session=6``).

A rescale of one kind, from N shards to M, while traffic flows:

0. The shards of the new ring are created and answer first (a new actor takes
   seconds to start: not while keys wait for the handoff). The shards the rescale
   *adds* are first handed to the caller's ``place`` hook, if any (``agora scale
   --node``: created on a given Ray node); shards that already run are never moved.
1. ``begin``: the ring (epoch E+1, M shards, handing off from N) is stored in
   PostgreSQL with a conditional write (two concurrent rescales cannot both win).
2. Every shard of both rings adopts it (``adopt_ring``), in parallel: a shard
   refuses at once the keys it gives away (``Rejected("moved")``, which the typed
   clients follow), flushes them, drops them from memory and only then answers;
   a key it gains waits (does not load) until the handoff has ended.
3. ``settle``: the ring is stored as ended, and every shard adopts the settled
   ring: the gained keys load from PostgreSQL, where their old owner wrote them.
4. Shards beyond M (a scale-down) own nothing any more: drained, and left running
   idle: a caller that has not heard of the new ring still reaches them and is told
   "moved" (a stopped shard would fail its call instead). The next restart drops them.

An interrupted rescale (the CLI killed in step 2) leaves the ring handing off;
running the same ``agora scale`` again resumes it. Carts, sessions, inventory and
orders move: an inventory SKU's reservations are part of its row, so they are handed
over with it, expiry included; an order shard stops the saga of an order it gives
away at a step boundary (the step under way finishes and commits) before it flushes
it and answers step 2, and the new owner resumes the saga from that persisted step
once the ring has settled, as after a restart. See docs/DECISIONS.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from actors.clients import ShardOps
from actors.directory import RingSpec, shard_name
from cluster.adapters.rings import PostgresRings
from cluster.bootstrap import MOVABLE_KINDS

API = "api"
# Kinds refused with a reason (none today: every shard kind moves live).
REFUSED: dict[str, str] = {}
MAX_SHARDS = 256
MAX_API_REPLICAS = 64
_TARGET = re.compile(r"([a-z]+)=(\d+)")


class ScaleError(ValueError):
    """An ``agora scale`` request that is refused before anything changes."""


def parse_targets(words: list[str]) -> dict[str, int]:
    """``["cart=8", "api=2"]`` -> ``{"cart": 8, "api": 2}``; refuses anything else."""
    if not words:
        raise ScaleError("nothing to scale: give kind=count, e.g. agora scale cart=8 api=2")
    targets: dict[str, int] = {}
    for word in words:
        match = _TARGET.fullmatch(word.strip())
        if match is None:
            raise ScaleError(f"{word!r}: expected kind=count, e.g. cart=8")
        kind, count = match.group(1), int(match.group(2))
        if kind in targets:
            raise ScaleError(f"{kind} given twice")
        if kind in REFUSED:
            raise ScaleError(f"{kind}: {REFUSED[kind]}")
        if kind != API and kind not in MOVABLE_KINDS:
            known = ", ".join((*MOVABLE_KINDS, *REFUSED, API))
            raise ScaleError(f"{kind}: not a kind that scales (known: {known})")
        limit = MAX_API_REPLICAS if kind == API else MAX_SHARDS
        if not 1 <= count <= limit:
            raise ScaleError(f"{kind}={count}: between 1 and {limit}")
        targets[kind] = count
    return targets


def check_node(node_id: str, nodes: Iterable[Mapping[str, Any]]) -> str:
    """``node_id`` if it is a live node of ``nodes`` (``ray.nodes()``); refuses otherwise,
    naming the live ones (``agora scale --node``)."""
    listed = list(nodes)
    alive = [str(n.get("NodeID")) for n in listed if n.get("Alive")]
    if node_id in alive:
        return node_id
    known = "; ".join(alive) or "none"
    if any(n.get("NodeID") == node_id for n in listed):
        raise ScaleError(f"--node {node_id}: that Ray node is dead (live nodes: {known})")
    raise ScaleError(f"--node {node_id!r}: no such Ray node (live nodes: {known})")


@dataclass(frozen=True)
class Handoff:
    """What one kind's rescale did and how long its handoff took."""

    kind: str
    epoch: int
    before: int
    after: int
    moved_keys: int
    handoff_ms: float  # ring stored -> ring settled (gained keys wait at most this long)
    flush_ms: float  # the slowest shard's flush of the keys it gave away
    idle: int  # shards beyond the new count, empty, answering "moved"
    ready_ms: float = 0.0  # before the handoff: every shard of both rings up and answering

    def describe(self) -> str:
        if self.before == self.after and not self.moved_keys:
            return f"{self.kind}: already {self.after} shards (ring epoch {self.epoch})"
        return (
            f"{self.kind}: {self.before} -> {self.after} shards (ring epoch {self.epoch}),"
            f" {self.moved_keys} resident keys handed off in {self.handoff_ms:.0f} ms"
            f" (slowest flush {self.flush_ms:.0f} ms;"
            f" shards ready in {self.ready_ms:.0f} ms before)"
            + (
                f", {self.idle} shards left empty (idle until the next restart)"
                if self.idle
                else ""
            )
        )


Connect = Callable[[], AbstractAsyncContextManager[Any]]
# Creates the named shards (which the rescale adds) where the operator wants them, before
# anything else touches them; a shard that already exists is left where it runs.
Place = Callable[[list[str]], Awaitable[Any]]


async def current_ring(
    kind: str, rings: PostgresRings | Any, connect: Connect, default_shards: int
) -> RingSpec:
    async with connect() as conn:
        stored = await rings.load(conn, kind)
    return stored or RingSpec(kind, 0, default_shards)


async def rescale(
    kind: str,
    target: int,
    *,
    rings: PostgresRings | Any,
    connect: Connect,
    ops: ShardOps,
    default_shards: int,
    clock: Callable[[], float] = time.monotonic,
    place: Place | None = None,
) -> Handoff:
    """Move ``kind`` to ``target`` shards live (the steps in the module docstring).

    ``place`` (optional) is called once, in step 0 before the ring is stored, with the
    names of the shards the rescale adds (none on a scale-down or when already there).
    """
    if kind not in MOVABLE_KINDS:
        raise ScaleError(f"{kind}: {REFUSED.get(kind, 'not a shard kind')}")
    current = await current_ring(kind, rings, connect, default_shards)
    if not current.handing_off and current.shards == target:
        return Handoff(kind, current.epoch, target, target, 0, 0.0, 0.0, 0)
    if current.handing_off and current.shards != target:
        raise ScaleError(
            f"{kind}: an interrupted rescale {current.previous} -> {current.shards} is"
            f" still handing off; finish it first: agora scale {kind}={current.shards}"
        )
    warming = clock()
    # The shards this rescale adds: beyond the ring it starts from (when resuming, the
    # ring the interrupted rescale started from; ``place`` then finds them created).
    start_from = current.previous if current.previous is not None else current.shards
    added = [shard_name(kind, i) for i in range(start_from, target)]
    if place is not None and added:
        await place(added)
    await ops.ping_shards([shard_name(kind, i) for i in range(max(target, current.shards))])
    started = clock()
    if current.handing_off:
        spec = current  # resume it
    else:
        spec = RingSpec(kind, current.epoch + 1, target, current.shards)
        async with connect() as conn:
            await rings.begin(conn, spec)
    assert spec.previous is not None
    names = spec.names()
    reports = await ops.adopt_ring(names, spec)
    settled = spec.settled()
    async with connect() as conn:
        await rings.settle(conn, settled)
    await ops.adopt_ring(names, settled)
    handoff_ms = (clock() - started) * 1000
    ops.directory.adopt(kind, settled.epoch, settled.shards)
    leaving = [shard_name(kind, i) for i in range(settled.shards, spec.previous)]
    if leaving:
        await ops.drain_shards(leaving)
    return Handoff(
        kind,
        settled.epoch,
        spec.previous,
        settled.shards,
        sum(int(r.get("moved_out", 0)) for r in reports),
        handoff_ms,
        float(max((r.get("took_ms", 0) for r in reports), default=0)),
        len(leaving),
        (started - warming) * 1000,
    )
