"""Rate limits shared by every Serve replica, and the client address they key on.

``RateLimiter`` owns the keys ``rl:<name>:<subject hash>`` in Redis. Each holds
one GCRA "theoretical arrival time" (TAT, microseconds of Redis server time)
and expires when the TAT passes, so an idle subject costs no memory. A
``Limit(name, limit, period_s)`` lets ``limit`` requests through at once from
idle and then one every ``period_s / limit`` seconds: "N per window" without a
window boundary to game. The whole decision is one Lua script, so concurrent
replicas can neither over-admit nor disagree because of skewed clocks.

Subjects (emails, IPs, user ids) are hashed before they become part of a key;
pass ``secret`` to make that hash keyed, since an unkeyed hash of an IPv4
address is reversible by enumeration. The limiter hashes exactly what it is
given, so normalise first (e.g. lowercase an email).

Failed-login limits ("5 failed logins per account per 15 minutes; a successful
login does not count") use the same limit as a failure counter. The exact
pattern reserves before the password is checked and gives the unit back on
success, so parallel guesses cannot slip past the limit::

    decision = await limiter.hit(FAILED_LOGINS, email)
    if not decision.allowed:
        raise TooManyRequests(retry_after=decision.retry_after_s)
    if verify(password):
        await limiter.refund(FAILED_LOGINS, email)

The simpler pattern, ``check`` before verifying and ``hit`` only on failure,
also keeps successes free, but the check and the hit are separate round
trips: N concurrent wrong guesses that all pass ``check`` are all verified.

``LeasedLimiter`` keeps such a limit off the hot path of a busy process: it
takes a lease of several units from Redis with one ``hit`` and spends it
in-process, at the price of a bounded error (its docstring). The per-IP API
limit uses it; login-failure and auth limits stay exact (one ``hit`` each).

``client_ip`` decides which address a request counts against: a forwarding
header is believed only when the direct peer is a trusted proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# KEYS[1] = key; ARGV = emission interval (us), tolerance (us), cost, consume (1/0).
# A negative cost gives units back. Returns {allowed, retry_after_us, remaining}.
_GCRA = """
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local consume = ARGV[4] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = math.max(tat + cost * emission, now)
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, math.floor((tolerance - (tat - now)) / emission)}
end
if not consume then
  return {1, 0, math.floor((tolerance - (tat - now)) / emission)}
end
if new_tat == now then
  redis.call('DEL', KEYS[1])
else
  local ttl_ms = math.ceil((new_tat - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
return {1, 0, math.floor((tolerance - (new_tat - now)) / emission)}
"""


@dataclass(frozen=True)
class Limit:
    """``limit`` requests per ``period_s`` seconds, all of them usable at once from idle."""

    name: str
    limit: int
    period_s: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a limit needs a name")
        if self.limit < 1:
            raise ValueError("limit must be at least 1")
        if not self.period_s > 0:
            raise ValueError("period_s must be positive")

    @property
    def emission_us(self) -> int:
        # Whole microseconds keep the script's arithmetic exact in Lua's doubles.
        return max(1, round(self.period_s * 1_000_000 / self.limit))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int
    remaining: int
    # Unrounded wait of a denial, for callers that derive a wait for another cost.
    retry_after_us: int = 0


class RateLimiter:
    """GCRA limits kept in Redis; build one per process from a ``redis.asyncio`` client."""

    def __init__(self, redis: Redis, *, secret: bytes | None = None) -> None:
        self._redis = redis
        self._secret = secret
        self._script = redis.register_script(_GCRA)

    def key(self, limit: Limit, subject: str) -> str:
        data = subject.encode()
        if self._secret is None:
            digest = hashlib.sha256(data).hexdigest()
        else:
            digest = hmac.new(self._secret, data, hashlib.sha256).hexdigest()
        return f"rl:{limit.name}:{digest[:32]}"

    async def _run(self, limit: Limit, subject: str, cost: int, *, consume: bool) -> Decision:
        emission = limit.emission_us
        reply = await self._script(
            keys=[self.key(limit, subject)],
            args=[emission, emission * limit.limit, cost, int(consume)],
        )
        allowed, retry_after_us, remaining = (int(value) for value in reply)
        if allowed:
            return Decision(True, 0, max(0, remaining))
        return Decision(
            False,
            max(1, math.ceil(retry_after_us / 1_000_000)),
            max(0, remaining),
            retry_after_us,
        )

    async def hit(self, limit: Limit, subject: str, cost: int = 1) -> Decision:
        """Consume ``cost`` units if they are all available; a denial consumes nothing."""
        if not 1 <= cost <= limit.limit:
            raise ValueError(f"cost must be between 1 and {limit.limit}")
        return await self._run(limit, subject, cost, consume=True)

    async def peek(self, limit: Limit, subject: str) -> Decision:
        """Whether one more unit would be allowed now, without consuming it."""
        return await self._run(limit, subject, 1, consume=False)

    async def check(self, limit: Limit, subject: str) -> Decision:
        """Same as ``peek``: would one more be allowed? (the failure-counter spelling)."""
        return await self.peek(limit, subject)

    async def refund(self, limit: Limit, subject: str, cost: int = 1) -> Decision:
        """Give back ``cost`` units taken by ``hit`` (e.g. the login turned out to succeed)."""
        if cost < 1:
            raise ValueError("cost must be at least 1")
        return await self._run(limit, subject, -cost, consume=True)

    async def reset(self, limit: Limit, subject: str) -> None:
        """Forget everything counted against ``subject`` under ``limit``."""
        await self._redis.delete(self.key(limit, subject))


def lease_units(limit: int, max_units: int) -> int:
    """Units leased at a time for a limit of ``limit``: 1% of it, at most ``max_units``, >= 1."""
    return max(1, min(limit // 100, max_units))


@dataclass
class _Lease:
    units: int = 0  # leased from Redis and not yet spent
    expires_at: float = 0.0
    renewing: asyncio.Future[Decision | None] | None = None


class Leases:
    """Pure state of leased budgets: a bounded LRU map ``subject -> lease``; time is passed in.

    A lease is spendable until ``expires_at``; unspent units of an expired lease
    are "carried": they are still counted in Redis, so the next renewal asks
    Redis only for the difference (no unit is lost or counted twice).
    """

    def __init__(self, lease_s: float, max_subjects: int) -> None:
        if not lease_s > 0:
            raise ValueError("lease_s must be positive")
        if max_subjects < 1:
            raise ValueError("max_subjects must be at least 1")
        self.lease_s = lease_s
        self.max_subjects = max_subjects
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    def __len__(self) -> int:
        return len(self._leases)

    def entry(self, subject: str) -> _Lease:
        """The subject's lease (created empty), marked most recently used; evicts the LRU one."""
        lease = self._leases.get(subject)
        if lease is None:
            lease = self._leases[subject] = _Lease()
            while len(self._leases) > self.max_subjects:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(subject)
        return lease

    def spend(self, subject: str, now: float) -> int | None:
        """Spend one unit of a live lease: the units left after it, or None (go to Redis)."""
        lease = self.entry(subject)
        if lease.units < 1 or now >= lease.expires_at:
            return None
        lease.units -= 1
        return lease.units

    def carried(self, subject: str) -> int:
        """Unspent units of the subject's (expired) lease, already counted in Redis."""
        lease = self._leases.get(subject)
        return lease.units if lease is not None else 0

    def grant(self, subject: str, units: int, now: float) -> None:
        """The subject now holds ``units`` unspent units for ``lease_s`` seconds."""
        lease = self.entry(subject)
        lease.units = units
        lease.expires_at = now + self.lease_s


class LeasedLimiter:
    """One ``Limit`` enforced in Redis, spent locally in leases of ``units`` requests.

    A request spends a unit of this process's lease for its subject; only when
    the lease is spent or older than ``lease_s`` does one ``hit`` of cost
    ``units`` (net of the expired lease's unspent units) take the next lease.
    Concurrent requests of one subject wait for a single renewal. Near the
    limit a lease takes what Redis has left, so no unit is refused while Redis
    still has it. ``units == 1`` is exactly one ``hit`` per request.

    Error bound: Redis counts every unit when it is leased, so what the
    process admits can run ahead of Redis's count by at most the units it
    holds unspent, at most ``units`` per subject at any moment. Over any window
    a subject gets at most the limit plus one lease per replica. (The other
    way, an evicted subject's unspent units are lost: it is under-admitted by
    at most one lease.) Redis errors propagate: the caller decides to fail open.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        limit: Limit,
        *,
        units: int,
        lease_s: float = 1.0,
        max_subjects: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= units <= limit.limit:
            raise ValueError(f"units must be between 1 and {limit.limit}")
        self.limiter = limiter
        self.limit = limit
        self.units = units
        self.leases = Leases(lease_s, max_subjects)
        self._clock = clock

    async def hit(self, subject: str) -> Decision:
        """Admit one request of ``subject``, from the local lease when it can."""
        while True:
            left = self.leases.spend(subject, self._clock())
            if left is not None:
                return Decision(True, 0, left)
            lease = self.leases.entry(subject)
            if lease.renewing is None:
                return await self._renew(subject, lease)
            denied = await asyncio.shield(lease.renewing)
            if denied is not None:
                return denied

    async def _renew(self, subject: str, lease: _Lease) -> Decision:
        """Take a new lease from Redis and spend one unit of it (or the denial)."""
        renewing: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        lease.renewing = renewing
        outcome: Decision | None = None
        try:
            outcome = await self._lease(subject)
            return outcome
        finally:
            lease.renewing = None
            # Waiters get a denial as theirs; after a grant (or an error) they look again.
            renewing.set_result(None if outcome is None or outcome.allowed else outcome)

    async def _lease(self, subject: str) -> Decision:
        carried = min(self.leases.carried(subject), self.units - 1)
        cost = self.units - carried
        decision = await self.limiter.hit(self.limit, subject, cost)
        got = cost if decision.allowed else 0
        if not decision.allowed and decision.remaining >= 1:
            # Redis has fewer than a lease left: take what is left.
            cost = min(decision.remaining, cost)
            decision = await self.limiter.hit(self.limit, subject, cost)
            got = cost if decision.allowed else 0
        held = carried + got
        if held < 1:
            # The wait Redis gave is for ``cost`` units; one unit is due sooner.
            wait_us = decision.retry_after_us - (cost - 1) * self.limit.emission_us
            retry = max(1, math.ceil(wait_us / 1_000_000))
            self.leases.grant(subject, 0, self._clock())
            return Decision(False, retry, 0, max(0, wait_us))
        self.leases.grant(subject, held - 1, self._clock())
        return Decision(True, 0, held - 1)


def trusted_networks(specs: Iterable[str]) -> frozenset[IPNetwork]:
    """Parse proxy addresses or CIDR blocks from settings; a bad entry raises ``ValueError``."""
    return frozenset(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


def _parse(text: str | None) -> IPAddress | None:
    if not text:
        return None
    text = text.strip()
    candidates = [text]
    if text.startswith("["):
        candidates.append(text[1:].partition("]")[0])
    elif text.count(":") == 1:
        candidates.append(text.partition(":")[0])
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        # A repeated header is one list (RFC 9110); reading only the first line
        # would let a client-sent line hide the one our proxy appended.
        values = getlist(name)
        return ",".join(values) if values else None
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def client_ip(
    scope_client_host: str | None,
    headers: Mapping[str, str],
    trusted_header: str | None,
    trusted_proxies: Collection[IPNetwork],
) -> str:
    """The address a request counts against.

    The forwarding header (a comma list such as ``X-Forwarded-For``) is read
    only when the direct peer is in ``trusted_proxies``; the client is then the
    right-most entry that is not itself a trusted proxy (entries further left
    are whatever the client chose to send), or the left-most entry when every
    one is a trusted proxy. A malformed entry reached on that walk discards the
    header. Without a usable header the peer address is used, and ``"unknown"``
    when there is no valid peer either.
    """

    def trusted(address: IPAddress) -> bool:
        return any(address in network for network in trusted_proxies)

    peer = _parse(scope_client_host)
    if peer is None:
        return "unknown"
    if not trusted_header or not trusted(peer):
        return str(peer)
    value = _header(headers, trusted_header)
    if value is None:
        return str(peer)
    entries = value.split(",")
    for text in reversed(entries):
        address = _parse(text)
        if address is None:
            return str(peer)
        if not trusted(address):
            return str(address)
    leftmost = _parse(entries[0])
    return str(leftmost) if leftmost is not None else str(peer)
