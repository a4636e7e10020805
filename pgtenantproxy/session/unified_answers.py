"""Unified's byte stream as the session machine reads it, sans-IO.

The proxy sends unified batches of its own (a deferred BEGIN whose answer the
client already got, re-prepares, a Flush-split head it syncs itself), and a
Parse/Describe-only unit whose ReadyForQuery must say "in a transaction":
:meth:`UnifiedAnswers.expect` queues a
:class:`~pgtenantproxy.protocol.local_answers.ReplyFilter` for each, in the
order their answers will come (or a :class:`~pgtenantproxy.protocol.copy_answers.CopyInReply`:
the answer to a COPY the proxy started itself). :meth:`UnifiedAnswers.feed` passes a chunk
through the pending filters and then finds the messages the machine keeps its
books by (ReadyForQuery, ErrorResponse, ParameterStatus, CopyInResponse), skipping every
other body by length.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple, Protocol

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.framing import Frame, FrameScanner

_WATCH = frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE, c.PARAMETER_STATUS, c.COPY_IN_RESPONSE})


class AnswerEdit(Protocol):
    """An edit of one answer up to its ReadyForQuery
    (:class:`~pgtenantproxy.protocol.local_answers.ReplyFilter`,
    :class:`~pgtenantproxy.protocol.copy_answers.CopyInReply`)."""

    done: bool
    #: The status of the answer's ReadyForQuery (once ``done``).
    status: int

    @property
    def skipped(self) -> bool:
        """The ReadyForQuery is removed from what the bookkeeping sees (a batch of the proxy's own)."""
        ...

    def feed(self, data: bytes) -> tuple[bytes, bytes, bytes]: ...


class Read(NamedTuple):
    """One chunk read: the bytes for the client, the watched messages, and the transaction
    status of the last batch of the proxy's own that ended in it (None: none ended)."""

    to_client: bytes
    frames: list[Frame]
    skipped_status: int | None


class UnifiedAnswers:
    __slots__ = ("_filters", "_scanner")

    def __init__(self) -> None:
        self._filters: deque[AnswerEdit] = deque()
        self._scanner = FrameScanner(_WATCH)

    @property
    def at_boundary(self) -> bool:
        """The stream so far ends at a message boundary (a message of the proxy's own may go out)."""
        return self._scanner.at_boundary

    def expect(self, reply_filter: AnswerEdit) -> None:
        """The next answer unified sends (after those already expected) is edited by ``reply_filter``."""
        self._filters.append(reply_filter)

    def feed(self, data: bytes) -> Read:
        status = None
        to_client = data
        if self._filters:
            data, to_client, status = self._filter(data)
        frames = self._scanner.feed(data) if data else []
        return Read(to_client, frames, status)

    def _filter(self, data: bytes) -> tuple[bytes, bytes, int | None]:
        """(bytes for the bookkeeping, bytes for the client, status of a skipped batch)."""
        seen: list[bytes] = []
        client: list[bytes] = []
        status = None
        filters = self._filters
        while filters and data:
            head = filters[0]
            for_us, for_client, data = head.feed(data)
            seen.append(for_us)
            client.append(for_client)
            if head.done:
                filters.popleft()
                if head.skipped:
                    status = head.status
        seen.append(data)
        client.append(data)
        return b"".join(seen), b"".join(client), status
