"""User sessions: the pure ``UserSessions`` state and the ``SessionShard`` actor.

One ``UserSessions`` per user holds their sessions (device, created, last
seen) and, per session, one refresh-token family: the hash of the current
refresh token and the hashes already used. Rotation, reuse detection and
revocation are decided here, serially per user, and answered only after the
change has committed (the durable path), so a revocation survives a crash.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.messages import Rejected
from actors.session.model import UserSessions
from actors.shard import EnvFactory, ShardEnv, ShardShell
from streams.events import Envelope


class SessionShardImpl(ShardShell[UserSessions]):
    """Owns the sessions of many users; every change is answered after its commit."""

    movable = True  # ``agora scale``: a live rescale hands its keys over (actors.shard)

    def __init__(self, name: str, env: ShardEnv | EnvFactory) -> None:
        super().__init__(name, env)

    def new_state(self, key: str) -> UserSessions:
        return UserSessions(key)

    def state_from_doc(self, key: str, doc: dict[str, Any], version: int) -> UserSessions:
        return UserSessions.from_doc(key, doc, version)

    async def _commit(self, user_id: str, state: UserSessions, events: list[Envelope]) -> None:
        self.changed(user_id, state, events)
        await self.flusher.durable(user_id, state.version)

    async def open(
        self, user_id: str, sid: str, refresh_hash: str, device: str, lifetime_ms: int
    ) -> None:
        """Start a session with its first refresh token (hash only)."""
        state = await self.state(user_id)
        events = state.open(sid, refresh_hash, device, self.clock(), lifetime_ms)
        await self._commit(user_id, state, events)

    async def rotate(
        self, user_id: str, sid: str, presented_hash: str, new_hash: str
    ) -> Rejected | None:
        """Rotate a refresh token: None when rotated, else ``Rejected`` (``reused``, ...)."""
        state = await self.state(user_id)
        result = state.rotate(sid, presented_hash, new_hash, self.clock())
        if isinstance(result, Rejected):
            return result
        # Decide before awaiting the commit: a concurrent reuse may revoke the
        # family meanwhile, and must not turn this (first) rotation into a loss.
        reused = state.sessions[sid].revoked_ms is not None
        await self._commit(user_id, state, result)
        return Rejected("reused", "the refresh token was already used") if reused else None

    async def revoke(self, user_id: str, sid: str, reason: str) -> bool:
        """End one session; False when there was no such active session."""
        state = await self.state(user_id)
        result = state.revoke(sid, self.clock(), reason)
        if isinstance(result, Rejected):
            return False
        await self._commit(user_id, state, result)
        return True

    async def revoke_all(self, user_id: str, reason: str) -> list[str]:
        """End every session of the user; returns the ended session ids."""
        state = await self.state(user_id)
        revoked, events = state.revoke_all(self.clock(), reason)
        if revoked:
            await self._commit(user_id, state, events)
        return revoked

    async def erase(self, user_id: str) -> None:
        """Forget the user's sessions entirely (erasure), durably."""
        state = await self.state(user_id)
        state.erase()
        await self._commit(user_id, state, [])

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's active sessions (no token material)."""
        state = await self.state(user_id)
        return [s.public() for s in state.active(self.clock())]

    async def is_active(self, user_id: str, sid: str) -> bool:
        """Whether the session is still active."""
        return (await self.state(user_id)).is_active(sid, self.clock())


SessionShard: Any = ray.remote(num_cpus=0, max_concurrency=1000)(SessionShardImpl)  # type: ignore[call-overload]
