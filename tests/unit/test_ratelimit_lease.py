"""Leased budgets of a Redis limit (``LeasedLimiter``) on an in-memory GCRA and a fake clock."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from serve.ratelimit import Decision, LeasedLimiter, Leases, Limit, lease_units


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class FakeGcra:
    """The Lua script of ``RateLimiter`` in Python, on the fake clock; records every call."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tat: dict[tuple[str, str], int] = {}
        self.calls: list[int] = []  # cost of each hit
        self.granted = 0
        self.fail = False

    async def hit(self, limit: Limit, subject: str, cost: int = 1) -> Decision:
        assert 1 <= cost <= limit.limit
        self.calls.append(cost)
        await asyncio.sleep(0)  # a round trip: other requests run meanwhile
        if self.fail:
            raise ConnectionError("redis down")
        emission = limit.emission_us
        tolerance = emission * limit.limit
        now = round(self.clock() * 1_000_000)
        tat = max(self.tat.get((limit.name, subject), now), now)
        new_tat = max(tat + cost * emission, now)
        allow_at = new_tat - tolerance
        if allow_at > now:
            wait_us = allow_at - now
            remaining = (tolerance - (tat - now)) // emission
            return Decision(False, max(1, math.ceil(wait_us / 1e6)), remaining, wait_us)
        self.tat[(limit.name, subject)] = new_tat
        self.granted += cost
        return Decision(True, 0, (tolerance - (new_tat - now)) // emission)


def leased(gcra, clock, limit, units, **kwargs) -> LeasedLimiter:
    return LeasedLimiter(gcra, limit, units=units, clock=clock, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gcra(clock) -> FakeGcra:
    return FakeGcra(clock)


def test_lease_size_is_one_percent_capped_and_at_least_one():
    assert lease_units(6000, 50) == 50
    assert lease_units(100_000_000, 50) == 50
    assert lease_units(300, 50) == 3
    assert lease_units(5, 50) == 1
    assert lease_units(6000, 1) == 1


async def test_one_redis_call_per_lease(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 6000, 60), units=50)

    decisions = [await limiter.hit("203.0.113.7") for _ in range(50)]

    assert all(d.allowed for d in decisions)
    assert gcra.calls == [50]
    assert (await limiter.hit("203.0.113.7")).allowed
    assert gcra.calls == [50, 50]
    assert (await limiter.hit("198.51.100.1")).allowed
    assert gcra.calls == [50, 50, 50]


async def test_an_expired_lease_goes_back_to_redis_and_carries_its_unspent_units(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 6000, 60), units=50, lease_s=1.0)
    for _ in range(10):
        await limiter.hit("ip")
    clock.now += 0.999
    assert (await limiter.hit("ip")).allowed
    assert gcra.calls == [50]

    clock.now += 0.002
    assert (await limiter.hit("ip")).allowed

    # 39 units were unspent: only the other 11 are asked for, nothing counts twice.
    assert gcra.calls == [50, 11]
    assert gcra.granted - 12 == 49 == limiter.leases.carried("ip")


async def test_exactly_the_limit_at_one_instant_across_replicas(gcra, clock):
    limit = Limit("api", 100, 60)
    replicas = [leased(gcra, clock, limit, units=8) for _ in range(3)]

    admitted = 0
    for i in range(300):
        admitted += (await replicas[i % 3].hit("ip")).allowed

    # Near the limit a lease takes what Redis has left: not one unit is lost.
    assert admitted == 100
    assert gcra.granted == 100


async def test_a_denial_waits_for_one_unit_not_for_a_whole_lease(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 10, 10), units=4)  # one unit per second
    assert [(await limiter.hit("ip")).allowed for _ in range(11)] == [True] * 10 + [False]

    denied = await limiter.hit("ip")
    assert not denied.allowed and denied.retry_after_s == 1
    clock.now += 1.0
    assert (await limiter.hit("ip")).allowed
    assert not (await limiter.hit("ip")).allowed


async def test_concurrent_requests_share_one_renewal(gcra, clock):
    gate = asyncio.Event()
    inner = gcra.hit

    async def slow_hit(limit, subject, cost=1):
        await gate.wait()
        return await inner(limit, subject, cost)

    gcra.hit = slow_hit
    limiter = leased(gcra, clock, Limit("api", 6000, 60), units=50)
    pending = [asyncio.ensure_future(limiter.hit("ip")) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()

    decisions = await asyncio.gather(*pending)

    assert all(d.allowed for d in decisions)
    assert gcra.calls == [50]
    assert limiter.leases.carried("ip") == 30


async def test_concurrent_requests_share_a_denial(gcra, clock):
    limit = Limit("api", 3, 60)
    limiter = leased(gcra, clock, limit, units=3)
    for _ in range(3):
        await limiter.hit("ip")
    calls = len(gcra.calls)

    decisions = await asyncio.gather(*(limiter.hit("ip") for _ in range(10)))

    assert not any(d.allowed for d in decisions)
    assert all(d.retry_after_s >= 1 for d in decisions)
    assert len(gcra.calls) == calls + 1


async def test_one_unit_leases_are_one_exact_hit_per_request(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 5, 60), units=1)
    assert [(await limiter.hit("ip")).allowed for _ in range(6)] == [True] * 5 + [False]
    assert gcra.calls == [1] * 6


async def test_redis_errors_propagate_and_keep_the_carried_units(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 6000, 60), units=50)
    await limiter.hit("ip")
    clock.now += 2
    gcra.fail = True
    with pytest.raises(ConnectionError):
        await limiter.hit("ip")
    with pytest.raises(ConnectionError):
        await limiter.hit("ip")  # no renewal left hanging

    gcra.fail = False
    assert (await limiter.hit("ip")).allowed
    assert gcra.calls[-1] == 1  # 49 units carried


async def test_subjects_are_bounded_least_recently_used_first(gcra, clock):
    limiter = leased(gcra, clock, Limit("api", 6000, 60), units=50, max_subjects=3)
    for ip in ["a", "b", "c", "a", "d"]:
        await limiter.hit(ip)

    assert len(limiter.leases) == 3
    assert limiter.leases.carried("b") == 0  # evicted
    assert limiter.leases.carried("a") == 48
    calls = len(gcra.calls)
    await limiter.hit("a")
    assert len(gcra.calls) == calls


def test_leases_expire_and_validate():
    leases = Leases(lease_s=1.0, max_subjects=2)
    assert leases.spend("x", 0.0) is None
    leases.grant("x", 2, 0.0)
    assert leases.spend("x", 0.5) == 1
    assert leases.spend("x", 1.0) is None
    assert leases.carried("x") == 1
    with pytest.raises(ValueError):
        Leases(lease_s=0, max_subjects=1)
    with pytest.raises(ValueError):
        LeasedLimiter(FakeGcra(FakeClock()), Limit("api", 10, 1), units=11)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
async def test_over_admission_is_at_most_one_lease_per_replica_per_window(seed):
    """Three replicas, random arrivals: in every window of the period, what is admitted
    exceeds what exact GCRA could admit by at most one lease per replica; and units
    counted in Redis but not admitted are only those the replicas still hold."""
    rng = random.Random(seed)
    clock = FakeClock()
    gcra = FakeGcra(clock)
    limit = Limit("api", 600, 6)  # 100/s, burst 600
    units = lease_units(limit.limit, 50)
    replicas = [leased(gcra, clock, limit, units, lease_s=0.5) for _ in range(3)]
    start = clock.now
    admitted_at: list[float] = []
    while clock.now - start < 30:
        clock.now += rng.expovariate(400)  # ~4x the sustained limit, in bursts
        if (await rng.choice(replicas).hit("ip")).allowed:
            admitted_at.append(clock.now)

    held = sum(r.leases.carried("ip") for r in replicas)
    assert gcra.granted - len(admitted_at) == held <= len(replicas) * (units - 1)
    # Exact GCRA admits at most limit + window/emission in any window.
    window = limit.period_s
    exact = limit.limit + window * limit.limit / limit.period_s
    worst = 0
    j = 0
    for i, t in enumerate(admitted_at):
        while admitted_at[j] <= t - window:
            j += 1
        worst = max(worst, i - j + 1)
    assert worst <= exact + len(replicas) * units
    assert len(admitted_at) >= 600 + 100 * 30 - len(replicas) * units  # and hardly less
