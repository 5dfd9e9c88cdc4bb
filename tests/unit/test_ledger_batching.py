"""The ledger's batching rule, with the clock passed in."""

from __future__ import annotations

import pytest

from ledger.batching import BatchPolicy


def test_closes_at_size_or_age_only_when_nothing_is_in_flight() -> None:
    policy = BatchPolicy(size=4, interval_s=2.0)
    assert not policy.should_close(0, None, 0)
    assert not policy.should_close(3, 1.9, 0)
    assert policy.should_close(3, 2.0, 0)
    assert policy.should_close(4, 0.0, 0)
    assert not policy.should_close(4, 0.0, 1)  # a batch still unanchored: wait
    assert not policy.should_close(400, 99.0, 1)
    assert policy.take(400) == 4 and policy.take(3) == 3


def test_backlog_drains_in_full_batches() -> None:
    policy = BatchPolicy(size=16, interval_s=1.0)
    waiting, batches = 100, []
    while policy.should_close(waiting, 5.0, 0):
        n = policy.take(waiting)
        batches.append(n)
        waiting -= n
    assert batches == [16] * 6 + [4]


@pytest.mark.parametrize(("size", "interval"), [(0, 1.0), (1, -1.0)])
def test_bad_settings(size: int, interval: float) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(size, interval)
