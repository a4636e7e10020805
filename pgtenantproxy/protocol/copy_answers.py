"""The proxy's side of a COPY FROM STDIN it starts before any server has seen it (sans-IO).

A COPY routed by its first row is answered by the proxy first (the client sends
no row before it has a CopyInResponse), and run on a server once the first row
has come:

* :func:`copy_in_response`: the CopyInResponse the proxy sends (overall format
  and one format code per column; all text, or all binary);
* :func:`copy_in_reply`: the whole answer up to it: for a simple Query the
  CopyInResponse alone; for an extended-protocol unit (``Parse? Describe(S)?
  Bind Describe(P)? Execute Sync``) ParseComplete, BindComplete... first, as the
  server would send them; None for another shape;
* :func:`copy_fail`: the CopyFail the proxy sends to abort a COPY (nothing of it
  is committed);
* :class:`CopyInReply`: the edit of the server's answer when the statement
  finally runs: what the client already got from the proxy (the acknowledgements
  and the CopyInResponse) is removed; an ErrorResponse that answers the
  proxy's own CopyFail is replaced by the proxy's error; everything else
  passes. In the extended protocol the server swallows the unit's Sync while in
  copy-in mode, and answers the client's Sync after CopyDone/CopyFail; when the
  statement fails before copy-in, the ReadyForQuery of the unit's own Sync is
  removed, so that the client gets exactly one ReadyForQuery either way (the
  one answering its Sync after the data).
"""

from __future__ import annotations

import struct

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.local_answers import statement_answers
from pgtenantproxy.protocol.messages import frame

#: Messages that may come at any time and answer nothing: they always pass.
_ASYNC = frozenset({c.NOTICE_RESPONSE, ord("A"), c.PARAMETER_STATUS})


def copy_in_response(columns: int, binary: bool) -> bytes:
    fmt = 1 if binary else 0
    return frame(c.COPY_IN_RESPONSE, struct.pack(f"!bh{columns}h", fmt, columns, *([fmt] * columns)))


def copy_in_reply(unit: Unit, response: bytes) -> bytes | None:
    """The server's answer to ``unit`` up to and including its CopyInResponse ``response``."""
    if unit.kind is UnitKind.QUERY:
        return response
    parts = statement_answers(unit)
    if parts is None:
        return None
    return b"".join(p or response for p in parts)


def copy_fail(message: str) -> bytes:
    return frame(c.COPY_FAIL, message.encode("utf-8", "replace").replace(b"\x00", b"") + b"\x00")


class CopyInReply:
    """Edit a COPY FROM statement's answer from a server, up to its ReadyForQuery (see the module
    docstring). :meth:`feed` returns ``(for the bookkeeping, for the client, the rest)``, as
    :class:`~pgtenantproxy.protocol.local_answers.ReplyFilter` does; the ReadyForQuery that ends
    the answer goes to both."""

    #: The answer's ReadyForQuery reaches the bookkeeping (it is not skipped).
    skipped = False

    def __init__(self, *, extended: bool) -> None:
        self.extended = extended
        self.done = False
        self.status = c.TX_IDLE
        self._buf = b""
        self._copying = False  # the server's CopyInResponse came (and was removed)
        self._before_copy = True  # nothing but acknowledgements and async messages so far
        self._error: bytes | None = None

    def replace_error(self, error: bytes) -> None:
        """The proxy sent CopyFail: the server's ErrorResponse to it becomes ``error``."""
        self._error = error

    def feed(self, data: bytes) -> tuple[bytes, bytes, bytes]:
        buf = self._buf + data if self._buf else data
        seen: list[bytes] = []
        client: list[bytes] = []
        pos, n = 0, len(buf)
        while pos + 5 <= n and not self.done:
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if end > n:
                break
            mtype, message = buf[pos], buf[pos:end]
            pos = end
            kept = self._edit(mtype, message)
            if kept is not None:
                seen.append(kept)
                client.append(kept)
        self._buf = b"" if self.done else buf[pos:]
        return b"".join(seen), b"".join(client), buf[pos:] if self.done else b""

    def _edit(self, mtype: int, message: bytes) -> bytes | None:
        """What becomes of one message of the answer (None: removed)."""
        if mtype in _ASYNC:
            return message
        if mtype == c.READY_FOR_QUERY:
            if self.extended and self._before_copy:
                self._before_copy = False  # the unit's own Sync: the client's Sync is answered later
                return None
            self.done = True
            self.status = message[5] if len(message) > 5 else c.TX_IDLE
            return message
        if mtype == c.ERROR_RESPONSE:
            if self._copying and self._error is not None:
                message, self._error = self._error, None
            return message
        if mtype == c.COPY_IN_RESPONSE and not self._copying and self._before_copy:
            self._copying, self._before_copy = True, False
            return None
        if self._before_copy:
            return None  # ParseComplete, BindComplete, NoData...: the proxy answered them already
        return message
