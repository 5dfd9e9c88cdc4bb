"""When a batch closes (pure: the caller passes the clock)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """Close a batch at ``size`` leaves, or when the oldest waiting leaf is ``interval_s`` old.

    One batch is anchored at a time: while one is still unanchored (the chain is
    slow or down), no new batch closes, so the backlog waits as leaves and goes
    out in full batches of ``size`` (one transaction each) when the chain is back.
    """

    size: int
    interval_s: float

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("batch size must be at least 1")
        if self.interval_s < 0:
            raise ValueError("batch interval must not be negative")

    def should_close(self, waiting: int, oldest_age_s: float | None, unanchored: int) -> bool:
        """Whether to close a batch of up to ``size`` of the ``waiting`` leaves now."""
        if waiting == 0 or unanchored > 0:
            return False
        if waiting >= self.size:
            return True
        return oldest_age_s is not None and oldest_age_s >= self.interval_s

    def take(self, waiting: int) -> int:
        """How many leaves the next batch takes."""
        return min(waiting, self.size)
