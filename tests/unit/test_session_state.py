"""``UserSessions``: the pure per-user session state behind the session shards."""

import json

from actors.messages import Rejected
from actors.session.model import USED_HASHES_KEPT, UserSessions

NOW = 1_700_000_000_000
DAY = 86_400_000
LIFETIME = 30 * DAY


def opened(*sids: str) -> UserSessions:
    state = UserSessions("user-1")
    for i, sid in enumerate(sids):
        assert state.open(sid, f"h-{sid}-0", f"device {sid}", NOW + i, LIFETIME) == []
    return state


def test_open_starts_an_active_session_without_token_material():
    state = UserSessions("user-1")
    assert state.open("s1", "hash-1", "x" * 500, NOW, LIFETIME) == []
    assert state.version == 1
    assert state.is_active("s1", NOW) and [s.sid for s in state.active(NOW)] == ["s1"]
    public = state.sessions["s1"].public()
    assert public == {
        "id": "s1",
        "device": "x" * 200,
        "created_at_ms": NOW,
        "last_seen_at_ms": NOW,
        "expires_at_ms": NOW + LIFETIME,
    }
    assert "hash-1" not in json.dumps(public)


def test_rotate_swaps_the_token_and_remembers_the_old_one():
    state = opened("s1")
    assert state.rotate("s1", "h-s1-0", "h-s1-1", NOW + 1000) == []
    session = state.sessions["s1"]
    assert session.refresh_hash == "h-s1-1" and session.used_hashes == ["h-s1-0"]
    assert session.last_seen_ms == NOW + 1000 and state.version == 2
    assert state.rotate("s1", "h-s1-1", "h-s1-2", NOW + 2000) == []
    assert state.sessions["s1"].used_hashes == ["h-s1-0", "h-s1-1"]


def test_reusing_a_rotated_token_revokes_the_whole_family():
    state = opened("s1", "s2")
    state.rotate("s1", "h-s1-0", "h-s1-1", NOW + 1000)
    events = state.rotate("s1", "h-s1-0", "attacker", NOW + 2000)
    assert isinstance(events, list) and len(events) == 1
    assert events[0].type == "auth.refresh_reused" and events[0].key == "user-1"
    assert events[0].payload == {"user_id": "user-1", "session_id": "s1"}
    session = state.sessions["s1"]
    assert session.revoked_ms == NOW + 2000 and session.revoked_reason == "refresh-token-reused"
    assert session.refresh_hash == "h-s1-1"
    # The current token of the family is dead too; other sessions are untouched.
    assert state.rotate("s1", "h-s1-1", "h-s1-2", NOW + 3000) == Rejected(
        "revoked", "this session has ended"
    )
    assert not state.is_active("s1", NOW + 3000)
    assert state.is_active("s2", NOW + 3000)
    assert state.rotate("s2", "h-s2-0", "h-s2-1", NOW + 3000) == []


def test_unknown_session_or_token_is_invalid_and_changes_nothing():
    state = opened("s1")
    version = state.version
    assert state.rotate("nope", "h-s1-0", "x", NOW).code == "invalid"
    assert state.rotate("s1", "never-issued", "x", NOW).code == "invalid"
    assert state.version == version
    assert state.is_active("s1", NOW) and state.sessions["s1"].refresh_hash == "h-s1-0"


def test_an_expired_session_cannot_rotate_and_is_not_listed():
    state = opened("s1")
    end = NOW + LIFETIME
    assert state.rotate("s1", "h-s1-0", "h-s1-1", end).code == "expired"
    assert state.sessions["s1"].refresh_hash == "h-s1-0"
    assert state.is_active("s1", end - 1) and not state.is_active("s1", end)
    assert state.active(end) == []


def test_revoke_ends_one_session_once():
    state = opened("s1", "s2")
    events = state.revoke("s1", NOW + 5, "logout")
    assert [(e.type, e.payload) for e in events] == [
        ("auth.session_revoked", {"user_id": "user-1", "session_id": "s1", "reason": "logout"})
    ]
    assert state.sessions["s1"].revoked_reason == "logout"
    assert state.revoke("s1", NOW + 6, "again") == Rejected("not-found", "no such active session")
    assert state.revoke("unknown", NOW + 6, "x").code == "not-found"
    assert state.rotate("s1", "h-s1-0", "x", NOW + 7).code == "revoked"
    assert [s.sid for s in state.active(NOW + 7)] == ["s2"]


def test_revoke_all_ends_only_the_active_sessions():
    state = opened("s1", "s2", "s3")
    state.revoke("s2", NOW + 10, "logout")
    version = state.version
    revoked, events = state.revoke_all(NOW + 20, "erased")
    assert sorted(revoked) == ["s1", "s3"] and len(events) == 2
    assert {e.payload["reason"] for e in events} == {"erased"}
    assert state.active(NOW + 20) == [] and state.version == version + 2
    assert state.sessions["s2"].revoked_reason == "logout"
    assert state.revoke_all(NOW + 30, "again") == ([], [])


def test_erase_forgets_everything():
    state = opened("s1", "s2")
    version = state.version
    state.erase()
    assert state.sessions == {} and state.to_doc() == {"sessions": []}
    assert state.version == version + 1


def test_sessions_ended_over_a_day_ago_are_pruned_on_open():
    state = opened("old", "recent")
    state.revoke("old", NOW, "logout")
    state.revoke("recent", NOW + DAY, "logout")
    state.open("new", "h-new", "d", NOW + DAY, LIFETIME)
    assert set(state.sessions) == {"old", "recent", "new"}
    state.open("newer", "h-newer", "d", NOW + DAY + 1, LIFETIME)
    assert set(state.sessions) == {"recent", "new", "newer"}


def test_used_hashes_are_bounded():
    state = opened("s1")
    current = "h-s1-0"
    for i in range(1, USED_HASHES_KEPT + 11):
        assert state.rotate("s1", current, f"h-s1-{i}", NOW + i) == []
        current = f"h-s1-{i}"
    used = state.sessions["s1"].used_hashes
    assert len(used) == USED_HASHES_KEPT and used[-1] == f"h-s1-{USED_HASHES_KEPT + 9}"
    # A recently used token is still recognised as a reuse.
    assert isinstance(state.rotate("s1", used[0], "x", NOW + 10_000), list)
    assert state.sessions["s1"].revoked_ms == NOW + 10_000


def test_document_round_trip_keeps_everything_that_decides():
    state = opened("s1", "s2", "s3")
    state.rotate("s1", "h-s1-0", "h-s1-1", NOW + 100)
    state.revoke("s2", NOW + 200, "ended-by-user")
    doc = json.loads(json.dumps(state.to_doc()))
    copy = UserSessions.from_doc("user-1", doc, state.version)
    assert copy == state
    assert UserSessions.from_doc("user-1", {}, 0) == UserSessions("user-1")
    # Decisions after a reload are the same: reuse is detected, revocation holds.
    assert copy.rotate("s2", "h-s2-0", "x", NOW + 300).code == "revoked"
    events = copy.rotate("s1", "h-s1-0", "x", NOW + 300)
    assert isinstance(events, list) and copy.sessions["s1"].revoked_ms == NOW + 300
    assert [s.sid for s in copy.active(NOW + 300)] == ["s3"]
