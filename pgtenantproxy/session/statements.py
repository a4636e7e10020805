"""The client's prepared statements, as the proxy must know them to re-prepare.

:class:`PreparedStatements` is a registry of statement name -> the client's
Parse message (a :class:`~pgtenantproxy.protocol.records.ClientMessage`, with its
SQL), kept in step with what the client sends: every Parse is recorded, and
Close (statement), ``DEALLOCATE name|ALL`` and ``DISCARD ALL`` forget, as the
server does. :meth:`PreparedStatements.track` applies one message.

A Parse is recorded when sent; if the server rejects it the name is simply
unknown to the server too, and a Bind of it fails where it runs as it would
directly. The same registry type records, per server connection, what *that*
server has (the unified connection: :mod:`.unified_statements`).
"""

from __future__ import annotations

import re

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.records import ClientMessage

_DEALLOCATE = re.compile(
    r"""^\s*(?:DEALLOCATE\s+(?:PREPARE\s+)?(?P<name>ALL|"(?:[^"]|"")+"|[^\s;]+)|(?P<discard>DISCARD\s+ALL))\s*;?\s*$""",
    re.IGNORECASE,
)


class PreparedStatements:
    def __init__(self) -> None:
        self._by_name: dict[str, ClientMessage] = {}

    def track(self, msg: ClientMessage) -> None:
        """Apply one client message (Parse, Close of a statement, a simple Query)."""
        mtype = msg.type
        if mtype == c.PARSE:
            self._by_name[msg.name] = msg
        elif mtype == c.CLOSE:
            if msg.target == "S":
                self._by_name.pop(msg.name, None)
        elif mtype == c.QUERY and msg.sql is not None:
            self.simple_query(msg.sql)

    def parsed(self, msg: ClientMessage) -> None:
        self._by_name[msg.name] = msg

    def closed(self, name: str) -> None:
        self._by_name.pop(name, None)

    def get(self, name: str) -> ClientMessage | None:
        """The Parse message that prepared ``name`` (its ``sql``, ``parse`` and bytes)."""
        return self._by_name.get(name)

    def simple_query(self, sql: str) -> None:
        """Forget statements a DEALLOCATE / DISCARD ALL in a simple query drops."""
        if len(sql) > 200 or not sql.lstrip()[:10].upper().startswith(("DEALLOCATE", "DISCARD")):
            return
        m = _DEALLOCATE.match(sql)
        if m is None:
            return
        name = m.group("name")
        if m.group("discard") or (name and name.upper() == "ALL"):
            unnamed = self._by_name.get("")
            self._by_name.clear()
            if unnamed is not None:
                self._by_name[""] = unnamed
            return
        if name:
            if name.startswith('"'):
                name = name[1:-1].replace('""', '"')
            else:
                name = name.lower()
            self.closed(name)

    def copy(self) -> PreparedStatements:
        other = PreparedStatements()
        other._by_name = dict(self._by_name)
        return other

    def __len__(self) -> int:
        return len(self._by_name)
