"""GCRA limits against a real Redis: counts, recovery, atomicity, hashed keys, memory, leases."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest
import redis.asyncio as aioredis

from serve.ratelimit import LeasedLimiter, Limit, RateLimiter
from tests.conftest import eventually

pytestmark = pytest.mark.integration

LOCAL_REDIS = "redis://127.0.0.1:6379/15"


def _redis_url() -> str:
    url = os.environ.get("AGORA_TEST_REDIS_URL")
    if url:
        return url
    from cluster.services import ServicesNotRunning, service_urls

    try:
        return service_urls().redis
    except ServicesNotRunning:
        return LOCAL_REDIS


@pytest.fixture
async def redis():
    url = _redis_url()
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await client.ping()
    except aioredis.ConnectionError as exc:
        await client.aclose()
        pytest.fail(f"no Redis reachable at {url} (set AGORA_TEST_REDIS_URL): {exc}")
    yield client
    await client.aclose()


@pytest.fixture
def limiter(redis) -> RateLimiter:
    return RateLimiter(redis)


def new_limit(limit: int, period_s: float) -> Limit:
    return Limit(name=f"test-{uuid.uuid4().hex[:12]}", limit=limit, period_s=period_s)


async def test_five_per_fifteen_minutes_then_denied(limiter):
    failed_logins = new_limit(5, 15 * 60)
    account = "shopper@example.com"

    decisions = [await limiter.hit(failed_logins, account) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]

    sixth = await limiter.hit(failed_logins, account)
    assert not sixth.allowed
    assert 1 <= sixth.retry_after_s <= 180
    assert sixth.remaining == 0

    checked = await limiter.check(failed_logins, account)
    assert not checked.allowed and 1 <= checked.retry_after_s <= 180
    assert (await limiter.hit(failed_logins, "someone-else@example.com")).allowed


async def test_reset_allows_again(limiter):
    limit = new_limit(5, 15 * 60)
    for _ in range(5):
        await limiter.hit(limit, "203.0.113.7")
    assert not (await limiter.hit(limit, "203.0.113.7")).allowed

    await limiter.reset(limit, "203.0.113.7")

    decision = await limiter.hit(limit, "203.0.113.7")
    assert decision.allowed and decision.remaining == 4


async def test_peek_does_not_consume(limiter):
    limit = new_limit(3, 60)
    for _ in range(10):
        peeked = await limiter.peek(limit, "u1")
        assert peeked.allowed and peeked.remaining == 3
    assert [(await limiter.hit(limit, "u1")).allowed for _ in range(4)] == [True] * 3 + [False]
    assert not (await limiter.peek(limit, "u1")).allowed


async def test_a_tiny_period_recovers_after_it_passes(limiter):
    limit = new_limit(2, 0.2)
    assert (await limiter.hit(limit, "u1")).allowed
    assert (await limiter.hit(limit, "u1")).allowed
    exhausted_at = time.monotonic()
    denied = await limiter.hit(limit, "u1")
    assert not denied.allowed and denied.retry_after_s == 1

    async def admitted() -> bool:
        return (await limiter.hit(limit, "u1")).allowed

    await eventually(admitted, timeout=2.0, interval=0.01)
    assert time.monotonic() - exhausted_at >= 0.05


async def test_concurrent_hits_admit_exactly_the_limit(limiter):
    limit = new_limit(20, 60)
    decisions = await asyncio.gather(*(limiter.hit(limit, "203.0.113.9") for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 20
    assert all(d.retry_after_s >= 1 for d in decisions if not d.allowed)


async def test_reserve_then_refund_keeps_successes_free(limiter):
    failed_logins = new_limit(5, 15 * 60)
    account = "shopper@example.com"
    for _ in range(4):
        assert (await limiter.hit(failed_logins, account)).allowed

    for _ in range(3):
        assert (await limiter.hit(failed_logins, account)).allowed
        await limiter.refund(failed_logins, account)

    assert (await limiter.hit(failed_logins, account)).allowed
    assert not (await limiter.hit(failed_logins, account)).allowed


async def test_cost_takes_several_units_at_once(limiter):
    limit = new_limit(5, 60)
    assert (await limiter.hit(limit, "u1", cost=3)).remaining == 2
    denied = await limiter.hit(limit, "u1", cost=3)
    assert not denied.allowed and denied.remaining == 2
    assert (await limiter.hit(limit, "u1", cost=2)).allowed
    with pytest.raises(ValueError):
        await limiter.hit(limit, "u1", cost=6)


async def test_subjects_are_hashed_in_keys(limiter, redis):
    limit = new_limit(5, 60)
    subjects = ["alice@example.com", "203.0.113.42"]
    for subject in subjects:
        await limiter.hit(limit, subject)

    keys = [key async for key in redis.scan_iter(match=f"rl:{limit.name}:*")]

    assert sorted(keys) == sorted(limiter.key(limit, s) for s in subjects)
    for key in keys:
        digest = key.removeprefix(f"rl:{limit.name}:")
        assert len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)
        assert not any(subject in key for subject in subjects)
        value = await redis.get(key)
        assert value.isdigit()


async def test_a_keyed_hash_changes_the_key(redis):
    limit = new_limit(5, 60)
    plain = RateLimiter(redis)
    keyed = RateLimiter(redis, secret=b"k" * 32)
    assert plain.key(limit, "203.0.113.42") != keyed.key(limit, "203.0.113.42")


async def test_keys_expire_within_the_period(limiter, redis):
    limit = new_limit(5, 60)
    await limiter.hit(limit, "u1")
    await limiter.hit(limit, "u1")
    ttl_ms = await redis.pttl(limiter.key(limit, "u1"))
    assert 0 < ttl_ms <= 60_000 * 2 // 5

    short = new_limit(2, 0.2)
    await limiter.hit(short, "u1")

    async def gone() -> bool:
        return not await redis.exists(limiter.key(short, "u1"))

    await eventually(gone, timeout=2.0, interval=0.01)


async def test_leased_budgets_keep_the_limit_across_replicas(limiter):
    limit = new_limit(20, 60)
    replicas = [LeasedLimiter(limiter, limit, units=6) for _ in range(2)]

    decisions = [await replicas[i % 2].hit("203.0.113.5") for i in range(30)]

    # Leases of 6, the last one only what Redis had left: exactly the limit, no more.
    assert sum(d.allowed for d in decisions) == 20
    assert all(d.retry_after_s >= 1 for d in decisions if not d.allowed)
    assert not (await limiter.peek(limit, "203.0.113.5")).allowed
