"""The pure helpers of loadtests/bench_events.py: percentiles, UUIDv7 times, Maildir reading."""

from __future__ import annotations

import mailbox
import math
import os
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from loadtests import bench_events
from streams.consumers.notifications import Rendered, build_message
from streams.events import decode, uuid7


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench_events.percentile(values, 50) == pytest.approx(50.5)
    assert bench_events.percentile(values, 95) == pytest.approx(95.05)
    assert bench_events.percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert bench_events.percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert bench_events.percentile([7.0], 95) == 7.0
    assert math.isnan(bench_events.percentile([], 50))


def test_row_formats_or_dashes() -> None:
    assert bench_events.row("x", []) == "| x | 0 | - | - | - | - |"
    assert bench_events.row("x", [10.0, 20.0]) == "| x | 2 | 15 | 20 | 20 | 20 |"


def test_uuid7_ms_reads_the_time_and_refuses_other_versions() -> None:
    assert bench_events.uuid7_ms(uuid7(1_700_000_000_123)) == 1_700_000_000_123
    assert bench_events.uuid7_ms(str(uuid7(42))) == 42
    assert bench_events.uuid7_ms(uuid.uuid4()) is None


def test_due_paces_a_fixed_rate() -> None:
    assert bench_events.due(0.0, 200) == 0
    assert bench_events.due(-1.0, 200) == 0
    assert bench_events.due(1.5, 200) == 300
    assert bench_events.due(0.004, 200) == 0


def test_deltas_skip_unknown_ends() -> None:
    assert bench_events.deltas_ms([(1.0, 1.25), (None, 2.0), (1.0, None)]) == [250.0]


def test_header_message_id() -> None:
    msg = EmailMessage()
    msg["Message-ID"] = "<abc@agora.local>"
    msg.set_content("hello")
    assert bench_events.header_message_id(msg.as_bytes()) == "<abc@agora.local>"
    assert bench_events.header_message_id(b"Subject: none\n\nbody") is None


def test_maildir_index_finds_the_consumers_mail(tmp_path: Path) -> None:
    """A mail built as the consumer builds it, stored as aiosmtpd's Mailbox stores it."""
    event_id = str(uuid7())
    key = f"{event_id}:{bench_events.ORDER_MAIL_KIND}"
    text = build_message("a@b.c", "d@e.f", Rendered("S", "t\n", "<p>h</p>"), key)
    box = mailbox.Maildir(tmp_path / "mail")
    box.add(text.encode())
    old = tmp_path / "mail" / "new" / "old-file"
    old.write_bytes(b"Message-ID: <old@x>\n\nbody")
    os.utime(old, (1_000.0, 1_000.0))
    (tmp_path / "mail" / "new" / "sub").mkdir()

    found = bench_events.maildir_index(tmp_path / "mail" / "new", since=2_000.0)

    assert list(found) == [bench_events.mail_message_id(event_id)]
    assert bench_events.maildir_index(tmp_path / "absent") == {}
    everything = bench_events.maildir_index(tmp_path / "mail" / "new")
    assert everything["<old@x>"] == 1_000.0


def test_windows_keep_the_worst_value_of_each_slot() -> None:
    points = [(100.0, 5.0), (101.0, 9.0), (111.0, 2.0), (99.0, 1.0)]
    worst = bench_events.windows(points, start=100.0)
    assert worst[0] == 9.0 and math.isnan(worst[1]) and worst[2] == 2.0
    assert bench_events.windows([], start=0.0) == []


def test_made_up_logins_are_outbox_rows_with_one_key_each() -> None:
    rows = bench_events.made_up_logins("persistent://agora/events/auth", "t", 5, 3)
    assert [r[2] for r in rows] == ["bench-events-t-5", "bench-events-t-6", "bench-events-t-7"]
    for event_id, topic, key, kind, envelope in rows:
        event = decode(envelope.encode())
        assert (
            (event.id, event.key, event.type)
            == (event_id, key, kind)
            == (
                event_id,
                key,
                "auth.logged_in",
            )
        )
        assert topic == "persistent://agora/events/auth" and event.payload == {"user_id": key}
        assert uuid.UUID(event_id).version == 7
    assert bench_events.made_up_logins("x", "t", 0, 0) == []
