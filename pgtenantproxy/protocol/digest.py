"""A digest of a query's answer, for comparing the same read on two servers.

Feed the server's answer bytes; the digest keeps the row count and a hash of
the rows — order-insensitive (XOR and sum of per-row hashes) unless the query
has ORDER BY, then order-sensitive (a running hash). Errors are recorded by
SQLSTATE. Nothing of the row values is kept, so a mismatch can be logged
without leaking data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.framing import MessageReader
from pgtenantproxy.protocol.messages import ErrorFields

_DATA_ROW = ord("D")
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Summary:
    rows: int
    digest: str
    error: str | None  # SQLSTATE of an error, if the read failed


class ResultDigest:
    def __init__(self, *, ordered: bool) -> None:
        self.ordered = ordered
        self.rows = 0
        self.done = False
        self._reader = MessageReader()
        self._xor = 0
        self._sum = 0
        self._running = hashlib.blake2b(digest_size=16)
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)
        while (msg := self._reader.next_message()) is not None:
            if msg.type == _DATA_ROW:
                self._row(msg.body)
            elif msg.type == c.ERROR_RESPONSE and self._error is None:
                self._error = ErrorFields.parse(msg.body).sqlstate or "XX000"
            elif msg.type == c.READY_FOR_QUERY:
                self.done = True

    def _row(self, body: bytes) -> None:
        self.rows += 1
        if self.ordered:
            self._running.update(len(body).to_bytes(4, "big"))
            self._running.update(body)
            return
        h = int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big")
        self._xor ^= h
        self._sum = (self._sum + h) & _MASK

    def summary(self) -> Summary:
        if self.ordered:
            digest = self._running.hexdigest()
        else:
            digest = f"{self._xor:016x}{self._sum:016x}"
        return Summary(self.rows, digest, self._error)
