"""A token bucket of rows per second, shared by every shop of one backfill run.

The bucket holds at most ``rate`` tokens (one second of burst) and refills at
``rate`` tokens per second. :meth:`TokenBucket.acquire` takes ``n`` tokens at
once and may drive the bucket into debt: the caller then sleeps until the debt
is paid back. A chunk larger than the bucket therefore still passes (after the
time it is worth), and callers that share the bucket queue up fairly, each one
paying for what the previous ones took. ``rate = 0`` turns throttling off.

The clock and the sleep function are injected (tests drive them by hand).
Single event loop only: nothing awaits between the refill and the
withdrawal, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError("a throttle rate cannot be negative")
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.rate
        self._stamp = clock()
        self.waited_s = 0.0  # total time callers slept (reported by the backfill)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @property
    def tokens(self) -> float:
        """Tokens available now (negative: debt)."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens now; returns how long the caller must wait before using them."""
        if not self.enabled or n <= 0:
            return 0.0
        self._refill()
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self, n: float) -> None:
        """Take ``n`` tokens, sleeping as long as the bucket is in debt."""
        delay = self.reserve(n)
        if delay > 0:
            self.waited_s += delay
            await self._sleep(delay)

    def chunk_rows(self, chunk_rows: int) -> int:
        """Rows per chunk under this throttle: at most one second's worth (so progress stays smooth)."""
        if not self.enabled:
            return chunk_rows
        return max(1, min(chunk_rows, int(self.rate)))
