"""User sessions: the pure ``UserSessions`` state and the ``SessionShard`` actor.

One ``UserSessions`` per user holds their sessions (device, created, last
seen) and, per session, one refresh-token family: the hash of the current
refresh token and the hashes already used. Rotation, reuse detection and
revocation are decided here, serially per user, and answered only after the
change has committed (the durable path), so a revocation survives a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from actors.messages import Rejected
from streams.events import AUTH_REFRESH_REUSED, AUTH_SESSION_REVOKED, Envelope, make_event

USED_HASHES_KEPT = 64


@dataclass
class Session:
    sid: str
    device: str
    created_ms: int
    last_seen_ms: int
    expires_ms: int
    refresh_hash: str
    used_hashes: list[str] = field(default_factory=list)
    revoked_ms: int | None = None
    revoked_reason: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.sid,
            "device": self.device,
            "created_at_ms": self.created_ms,
            "last_seen_at_ms": self.last_seen_ms,
            "expires_at_ms": self.expires_ms,
        }


@dataclass
class UserSessions:
    """All sessions of one user. Commands return events or a ``Rejected``."""

    user_id: str
    sessions: dict[str, Session] = field(default_factory=dict)
    version: int = 0

    def open(
        self, sid: str, refresh_hash: str, device: str, now_ms: int, lifetime_ms: int
    ) -> list[Envelope]:
        self.sessions[sid] = Session(
            sid, device[:200], now_ms, now_ms, now_ms + lifetime_ms, refresh_hash
        )
        self._prune(now_ms)
        self.version += 1
        return []

    def rotate(
        self, sid: str, presented_hash: str, new_hash: str, now_ms: int
    ) -> list[Envelope] | Rejected:
        """Swap the refresh token; a used one revokes the whole family (RFC 9700)."""
        session = self.sessions.get(sid)
        if session is None:
            return Rejected("invalid", "unknown refresh token")
        if session.revoked_ms is not None:
            return Rejected("revoked", "this session has ended")
        if now_ms >= session.expires_ms:
            return Rejected("expired", "the session reached its absolute lifetime")
        if presented_hash in session.used_hashes:
            session.revoked_ms = now_ms
            session.revoked_reason = "refresh-token-reused"
            self.version += 1
            return [
                make_event(
                    AUTH_REFRESH_REUSED,
                    self.user_id,
                    {"user_id": self.user_id, "session_id": sid},
                    now_ms,
                )
            ]
        if presented_hash != session.refresh_hash:
            return Rejected("invalid", "unknown refresh token")
        session.used_hashes = [*session.used_hashes, presented_hash][-USED_HASHES_KEPT:]
        session.refresh_hash = new_hash
        session.last_seen_ms = now_ms
        self.version += 1
        return []

    def revoke(self, sid: str, now_ms: int, reason: str) -> list[Envelope] | Rejected:
        session = self.sessions.get(sid)
        if session is None or session.revoked_ms is not None:
            return Rejected("not-found", "no such active session")
        session.revoked_ms = now_ms
        session.revoked_reason = reason
        self.version += 1
        return [
            make_event(
                AUTH_SESSION_REVOKED,
                self.user_id,
                {"user_id": self.user_id, "session_id": sid, "reason": reason},
                now_ms,
            )
        ]

    def revoke_all(self, now_ms: int, reason: str) -> tuple[list[str], list[Envelope]]:
        revoked, events = [], []
        for sid in list(self.sessions):
            result = self.revoke(sid, now_ms, reason)
            if not isinstance(result, Rejected):
                revoked.append(sid)
                events += result
        return revoked, events

    def erase(self) -> None:
        """Forget every session (the user asked to be erased)."""
        self.sessions.clear()
        self.version += 1

    def active(self, now_ms: int) -> list[Session]:
        return [s for s in self.sessions.values() if s.revoked_ms is None and now_ms < s.expires_ms]

    def is_active(self, sid: str, now_ms: int) -> bool:
        session = self.sessions.get(sid)
        return session is not None and session.revoked_ms is None and now_ms < session.expires_ms

    def _prune(self, now_ms: int) -> None:
        """Drop sessions that ended more than a day ago (bounded documents)."""
        day = 86_400_000
        for sid, s in list(self.sessions.items()):
            ended = s.revoked_ms if s.revoked_ms is not None else s.expires_ms
            if ended + day < now_ms:
                del self.sessions[sid]

    def to_doc(self) -> dict[str, Any]:
        return {"sessions": [asdict(s) for s in self.sessions.values()]}

    @classmethod
    def from_doc(cls, user_id: str, doc: dict[str, Any], version: int) -> UserSessions:
        sessions = {s["sid"]: Session(**s) for s in doc.get("sessions", [])}
        return cls(user_id, sessions, version)
