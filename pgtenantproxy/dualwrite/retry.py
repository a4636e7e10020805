"""When a failing entry is tried again, and when it is given up on (dead-lettered).

``attempts`` counts failed tries. After failed try ``n``: if ``n > retries`` the
entry is dead-lettered, else it is tried again after ``delay_ms(n)``. With the
seed's settings (3 retries; 1 s, 2 s, 4 s) an entry is tried four times over
about seven seconds. The same schedule paces a shop whose target is
unreachable, except that such a shop is never given up on: it keeps retrying
at the longest delay, and its entries are not charged.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtenantproxy.config import DualWriteSection


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    delays_ms: tuple[int, ...] = (1000, 2000, 4000)

    def __post_init__(self) -> None:
        if self.retries < 0 or not self.delays_ms or min(self.delays_ms) < 0:
            raise ValueError("retries must be >= 0 and delays a non-empty list of non-negative numbers")

    @classmethod
    def from_config(cls, section: DualWriteSection) -> RetryPolicy:
        return cls(section.retry_attempts, tuple(section.retry_backoff_ms))

    def delay_ms(self, failures: int) -> int:
        """The wait after the ``failures``-th failed try (the last delay repeats)."""
        if failures < 1:
            return 0
        return self.delays_ms[min(failures, len(self.delays_ms)) - 1]

    def exhausted(self, failures: int) -> bool:
        """True when an entry that failed ``failures`` times goes to the dead letters."""
        return failures > self.retries
