"""Cancel keys: the proxy's secret per session, mapped back to the real server key.

Clients get the unified backend's real process id with a secret key of the
proxy's own. A CancelRequest arriving at the proxy is matched (constant-time
on the key) to its session, which forwards a real CancelRequest to whichever
server connection runs that client's query, and the client's cancel connection
is closed only after the server has closed the forwarded one (as PostgreSQL
closes only after signalling the backend).
"""

from __future__ import annotations

import hmac
from typing import Protocol


class Cancellable(Protocol):
    async def forward_cancel(self) -> None: ...


class CancelRegistry:
    def __init__(self) -> None:
        self._by_pid: dict[int, list[tuple[bytes, Cancellable]]] = {}

    def add(self, pid: int, key: bytes, session: Cancellable) -> None:
        self._by_pid.setdefault(pid, []).append((key, session))

    def remove(self, pid: int, session: Cancellable) -> None:
        entries = self._by_pid.get(pid)
        if not entries:
            return
        entries[:] = [(k, s) for k, s in entries if s is not session]
        if not entries:
            del self._by_pid[pid]

    def find(self, pid: int, key: bytes) -> Cancellable | None:
        for known, session in self._by_pid.get(pid, ()):
            if len(known) == len(key) and hmac.compare_digest(known, key):
                return session
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_pid.values())
