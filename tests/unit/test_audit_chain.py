"""The audit hash chain, pure: intact, edited, deleted, reordered, truncated against an anchor."""

import json
from datetime import UTC, datetime

import pytest

from streams.consumers.audit import (
    GENESIS,
    Appended,
    audit_entry,
    check_chain,
    record_hash,
)
from streams.events import ADMIN_ACTION, AUTH_LOGIN_FAILED, CART_CLEARED, make_event


def _canon(fields: dict) -> str:
    """Stands in for PostgreSQL's audit_canonical(): any deterministic text works here."""
    return json.dumps([fields[k] for k in sorted(fields)], ensure_ascii=False)


def _chain(n: int) -> list[dict]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        fields = {"seq": seq, "actor": f"admin-{seq % 3}", "details": {"on_hand": seq}}
        row = {"seq": seq, "fields": fields, "canon": _canon(fields), "prev_hash": prev}
        row["hash"] = prev = record_hash(prev, row["canon"])
        rows.append(row)
    return rows


def test_an_intact_chain_verifies() -> None:
    rows = _chain(50)
    verdict = check_chain(rows)
    assert verdict.ok and verdict.records == 50
    assert verdict.head == Appended(50, rows[-1]["hash"])
    assert check_chain([]).ok


def test_an_edited_record_is_found() -> None:
    rows = _chain(20)
    rows[7]["canon"] = _canon({**rows[7]["fields"], "details": {"on_hand": 9999}})
    verdict = check_chain(rows)
    assert not verdict.ok and verdict.bad_seq == 8 and "altered" in (verdict.problem or "")


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    rows = _chain(20)
    rows[7]["canon"] = _canon({**rows[7]["fields"], "actor": "someone-else"})
    rows[7]["hash"] = record_hash(rows[7]["prev_hash"], rows[7]["canon"])
    verdict = check_chain(rows)
    assert not verdict.ok and verdict.bad_seq == 9


def test_a_deleted_record_is_found() -> None:
    rows = _chain(20)
    del rows[4]
    verdict = check_chain(rows)
    assert not verdict.ok and verdict.bad_seq == 5 and "missing" in (verdict.problem or "")


def test_a_deleted_and_renumbered_record_is_found() -> None:
    rows = _chain(20)
    del rows[4]
    for i, row in enumerate(rows[4:], start=5):
        row["seq"] = i
    assert not check_chain(rows).ok


def test_truncation_needs_the_anchored_head() -> None:
    rows = _chain(20)
    anchored = Appended(20, rows[-1]["hash"])
    assert check_chain(rows[:18]).ok  # undetectable from the chain alone
    verdict = check_chain(rows[:18], anchored)
    assert not verdict.ok and "removed" in (verdict.problem or "")
    assert check_chain(rows, anchored).ok
    assert not check_chain(rows, Appended(20, "f" * 64)).ok


def test_the_hash_depends_on_the_text_and_the_previous_hash() -> None:
    row = _chain(1)[0]
    base = record_hash(GENESIS, row["canon"])
    assert record_hash(GENESIS, row["canon"] + " ") != base
    assert record_hash("1" * 64, row["canon"]) != base
    assert len(base) == 64


def test_events_become_records_and_others_are_ignored() -> None:
    event = make_event(
        ADMIN_ACTION,
        "admin-1",
        {"actor": "admin-1", "action": "coupon.create", "target": "X10", "details": {"v": 1}},
        1_764_800_000_123,
    )
    entry = audit_entry(event)
    assert entry is not None
    assert (entry["actor"], entry["action"], entry["target"]) == ("admin-1", "coupon.create", "X10")
    assert entry["at"] == datetime(2025, 12, 3, 22, 13, 20, 123000, tzinfo=UTC)
    failed = make_event(AUTH_LOGIN_FAILED, "unknown", {"user_id": None, "reason": "bad"}, 1)
    entry = audit_entry(failed)
    assert entry is not None and entry["actor"] is None and entry["action"] == "auth.login_failed"
    assert audit_entry(make_event(CART_CLEARED, "c", {}, 1)) is None


def test_a_malformed_admin_event_is_refused() -> None:
    bad = make_event(ADMIN_ACTION, "k", {"action": "x"}, 1)
    with pytest.raises(ValueError):
        audit_entry(bad)
