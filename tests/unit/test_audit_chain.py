"""The audit hash chain, pure: intact, edited, deleted, reordered, truncated against an anchor."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams.consumers.audit import (
    GENESIS,
    Appended,
    ChainWalker,
    Span,
    Verdict,
    append,
    audit_entry,
    canonical,
    canonical_at,
    canonical_at_us,
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


# --- the stored rows, as verify reads them (canonical text built here) ----------------

# Literal outputs of PostgreSQL 16's audit_canonical() (migration 0010) for these inputs:
# the chains written before ``canonical`` existed must still verify.
PG_CANONICAL = [
    (
        (
            1,
            "00000000-0000-0000-0000-000000000001",
            datetime(2026, 1, 1, tzinfo=UTC),
            "admin-1",
            "inventory.set",
            "SKU-1",
            '{"on_hand": 3}',
        ),
        '[1, "00000000-0000-0000-0000-000000000001", "2026-01-01T00:00:00.000000Z", "admin-1",'
        ' "inventory.set", "SKU-1", {"on_hand": 3}]',
    ),
    (
        (
            42,
            "12345678-9abc-def0-1234-56789abcdef0",
            datetime(5, 3, 4, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            None,
            'a"b\\c\n\t\r\b\f\x01\x1f\x7f é 中 😀',
            None,
            '{"b": "", "z": [1.0, 1000, -0.5, 12345678901234567890, true, null],'
            ' "aa": {"k": "\\u0001\\n\\"xé"}, "é": 1}',
        ),
        '[42, "12345678-9abc-def0-1234-56789abcdef0", "0005-03-03T23:36:07.000008Z", null,'
        ' "a\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f é 中 😀", null, {"b": "", "z": [1.0, 1000,'
        ' -0.5, 12345678901234567890, true, null], "aa": {"k": "\\u0001\\n\\"xé"}, "é": 1}]',
    ),
    (
        (
            9,
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            "",
            "x",
            "",
            "{}",
        ),
        '[9, "ffffffff-ffff-ffff-ffff-ffffffffffff", "2026-12-31T23:59:59.999999Z", "", "x", "",'
        " {}]",
    ),
]


@pytest.mark.parametrize(("fields", "text"), PG_CANONICAL)
def test_canonical_is_what_postgresql_renders(fields: tuple, text: str) -> None:
    assert canonical(*fields) == text


def test_canonical_time_is_utc_with_six_digits_whatever_the_zone() -> None:
    utc = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert canonical_at(utc) == "2026-05-01T12:00:00.000000Z"
    assert canonical_at(utc.astimezone(timezone(timedelta(hours=-3)))) == canonical_at(utc)
    assert canonical_at(utc.replace(tzinfo=timezone(timedelta(0)))) == canonical_at(utc)
    assert canonical_at(utc.replace(tzinfo=None)) == canonical_at(utc)  # naive: UTC


def _stored(n: int) -> list[tuple]:
    """Rows as ``verify`` reads them: (seq, event_id, at, actor, action, target, details,
    prev_hash, hash), hashed with the shared ``canonical``."""
    rows, prev = [], GENESIS
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, n + 1):
        fields = (
            seq,
            str(uuid.UUID(int=seq)),
            start + timedelta(seconds=seq),
            f"admin-{seq % 3}",
            "inventory.set",
            f"SKU-{seq}",
            f'{{"on_hand": {seq}}}',
        )
        digest = record_hash(prev, canonical(*fields))
        rows.append((*fields, prev, digest))
        prev = digest
    return rows


def _walk(rows: list[tuple], expected: Appended | None = None, page: int = 7) -> Verdict:
    """``verify``'s sequential walk: pages of ``page`` rows through one walker."""
    walker = ChainWalker(expected)
    for i in range(0, len(rows), page):
        failed = walker.feed(rows[i : i + page])
        if failed is not None:
            return failed
    return walker.finish()


def _walk_spans(rows: list[tuple], expected: Appended | None = None, span: int = 7) -> Verdict:
    """``verify_parallel``'s walk: spans of ``span`` rows each checked on its own
    (``mid_chain``), joined in order."""
    spans = []
    for i in range(0, len(rows), span):
        chunk = rows[i : i + span]
        walker = ChainWalker.mid_chain(chunk[0][0], chunk[0][7], expected)
        failed = walker.feed(chunk)
        first = (chunk[0][0], chunk[0][7])
        spans.append(
            Span(first, failed=failed)
            if failed
            else Span(first, walker.count, walker.prev, walker.head)
        )
    spans.append(Span(None))  # a range with no record (a deleted block) is skipped
    walker = ChainWalker(expected)
    for one in spans:
        failed = walker.join(one)
        if failed is not None:
            return failed
    return walker.finish()


def _edited(rows: list[tuple], i: int, rehash: bool = False) -> list[tuple]:
    rows = list(rows)
    row = list(rows[i])
    row[6] = '{"on_hand": 9999}'
    if rehash:  # the forger recomputes this record's hash: the next link breaks
        row[8] = record_hash(row[7], canonical(*row[:7]))
    rows[i] = tuple(row)
    return rows


def test_the_stored_rows_of_an_intact_chain_verify_both_ways() -> None:
    rows = _stored(30)
    for walk in (_walk, _walk_spans):
        verdict = walk(rows)
        assert verdict == Verdict(True, 30, Appended(30, rows[-1][8]))
    assert _walk([]).ok and _walk_spans([]).ok


# Positions: the first record, inside a page or span of 7, its last record, the next
# page's first record (a page boundary), the newest record.
@pytest.mark.parametrize("i", [0, 3, 6, 7, 13, 14, 29])
def test_tampering_anywhere_gets_the_same_verdict_sequential_or_in_spans(i: int) -> None:
    rows = _stored(30)
    seq = i + 1
    cases = {
        "edited": (_edited(rows, i), seq, "altered"),
        "edited and rehashed": (_edited(rows, i, rehash=True), seq + 1, "does not follow"),
        "deleted": (rows[:i] + rows[i + 1 :], seq, "missing"),
        "inserted": ([*rows[:i], _edited(rows, i)[i], *rows[i:]], seq, "altered"),
        "reordered": (
            rows[:i] + rows[i + 1 : i + 2] + rows[i : i + 1] + rows[i + 2 :],
            seq,
            "missing",
        ),
    }
    for name, (tampered, bad_seq, problem) in cases.items():
        if name in ("edited and rehashed", "deleted") and i == len(rows) - 1:
            bad_seq, problem = None, None  # the newest record: only an anchor shows it
        if name == "reordered" and i == len(rows) - 1:
            continue  # nothing after the newest record to swap with
        for page in (1, 7, 10, 64):
            sequential = _walk(tampered, page=page)
            assert sequential == _walk_spans(tampered, span=page), (name, page)
            assert sequential.bad_seq == bad_seq, (name, page, sequential)
            assert problem is None or problem in (sequential.problem or ""), (name, sequential)
            if bad_seq is not None:
                assert sequential.records == bad_seq - 1
                head = None if bad_seq == 1 else Appended(bad_seq - 1, tampered[bad_seq - 2][8])
                assert sequential.head == head, (name, page)


def test_the_anchored_head_is_checked_sequential_or_in_spans() -> None:
    rows = _stored(30)
    for walk in (_walk, _walk_spans):
        assert walk(rows, Appended(14, rows[13][8])).ok
        wrong = walk(rows, Appended(14, "f" * 64))
        assert not wrong.ok and wrong.bad_seq == 14 and "anchored" in (wrong.problem or "")
        assert wrong.head == Appended(14, rows[13][8]) and wrong.records == 14
        short = walk(rows[:20], Appended(30, rows[-1][8]))
        assert not short.ok and short.bad_seq == 21 and "removed" in (short.problem or "")


DETAILS_JSONB = '{"pct": 10, "code": "X\\"10"}'


class _Writer:
    """Stands in for the connection ``append`` writes through: PostgreSQL's answers
    for an empty log, and jsonb's text for the details it renders."""

    def __init__(self) -> None:
        self.inserted: tuple = ()

    async def execute(self, query: str, *args: object) -> None:
        if query.startswith("INSERT"):
            self.inserted = args

    async def fetchval(self, query: str, *args: object) -> object:
        if "jsonb::text" in query:  # jsonb orders keys by length, then bytes
            assert json.loads(str(args[0])) == json.loads(DETAILS_JSONB)
            return DETAILS_JSONB
        return None

    async def fetchrow(self, query: str, *args: object) -> None:
        return None


async def test_what_append_hashes_is_what_verify_rebuilds_from_the_stored_row() -> None:
    writer = _Writer()
    at = datetime(2026, 3, 1, 9, 30, 0, 250, tzinfo=timezone(timedelta(hours=-3)))
    event_id = "0F0E0D0C-0B0A-0908-0706-050403020100"
    appended = await append(
        writer,  # type: ignore[arg-type]
        event_id=event_id,
        at=at,
        actor="admin-\u00e9",
        action="coupon.create",
        target=None,
        details={"code": 'X"10', "pct": 10},
    )
    assert appended is not None
    seq, event, when, actor, action, target, _, prev, digest = writer.inserted
    # What PostgreSQL hands back: the uuid's lowercase text, the instant in UTC, jsonb text.
    stored = (
        seq,
        str(event).lower(),
        when.astimezone(UTC),
        actor,
        action,
        target,
        DETAILS_JSONB,
        prev,
        digest,
    )
    assert str(event) == event_id.lower()
    assert _walk([stored]) == Verdict(True, 1, Appended(1, appended.hash))


def test_a_time_python_cannot_hold_is_an_altered_record() -> None:
    rows = _stored(10)
    row = list(rows[4])
    row[2] = None  # what verify's query returns for a time after 9999 or BC
    rows[4] = tuple(row)
    for walk in (_walk, _walk_spans):
        verdict = walk(rows)
        assert (verdict.bad_seq, verdict.problem, verdict.records) == (5, "record 5 was altered", 4)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 12, 4, 22, 13, 5, 123456, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),  # the wire's zero
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # negative on the wire
        datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC),  # a three-digit year keeps four digits
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_the_wire_microseconds_render_as_the_datetime_does(when: datetime) -> None:
    wire = (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert canonical_at_us(wire) == canonical_at(when)
    assert canonical_at_us(wire) == canonical_at_us(wire)  # from the per-day cache too
