"""Which of the client's prepared statements the unified server has, as it has them.

The session's own (unified) connection does not see every Parse the client
sends: a unit may run on a tenant connection (read routing, a cut-over shop's
transaction, a lazy BEGIN replayed there), and a Parse-only unit in a pinned
transaction goes to the tenant connection. :class:`UnifiedStatements` records
what was sent to unified (Parse, Close of a statement, ``DEALLOCATE`` /
``DISCARD ALL`` in a simple query, with the same rules as
:class:`~pgtenantproxy.server.statements.PreparedStatements`), and
:meth:`UnifiedStatements.preparation` gives the Close + Parse messages a unit
needs first when it binds or describes a statement unified lacks (or has with
another text). The relay sends them in a batch of its own, answers skipped,
only at a Sync boundary (never inside the client's unfinished batch). Sans-IO.
"""

from __future__ import annotations

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.framing import Message
from pgtenantproxy.protocol.messages import CloseOrDescribe, Parse, Query
from pgtenantproxy.server.statements import PreparedStatements


def _name_of(body: bytes, start: int = 0) -> str:
    end = body.find(b"\x00", start)
    return body[start:end].decode("utf-8", "replace") if end >= 0 else ""


def _bound(msg: Message) -> str | None:
    """The statement a Bind uses, or a Describe 'S' names (None otherwise)."""
    body = msg.body
    if msg.type == c.DESCRIBE:
        return _name_of(body, 1) if body[:1] == b"S" else None
    first = body.find(b"\x00")
    return _name_of(body, first + 1) if first >= 0 else None


class UnifiedStatements:
    def __init__(self) -> None:
        self._known = PreparedStatements()

    def sent(self, unit: Unit) -> None:
        """``unit`` went to unified: its Parse / Close / DEALLOCATE act there."""
        for msg in unit.messages:
            mtype = msg.type
            if mtype == c.PARSE:
                self._known.parsed(Parse.parse(msg.body), msg)
            elif mtype == c.CLOSE:
                target = CloseOrDescribe.parse(msg.body)
                if target.kind == "S":
                    self._known.closed(target.name)
            elif mtype == c.QUERY:
                self._known.simple_query(Query.parse(msg.body).sql)

    def preparation(self, unit: Unit, client: PreparedStatements) -> list[Message]:
        """Close + Parse for the statements ``unit`` uses that unified lacks (recorded as sent)."""
        out: list[Message] = []
        parsed_here: set[str] = set()
        for msg in unit.messages:
            if msg.type == c.PARSE:
                parsed_here.add(_name_of(msg.body))
                continue
            if msg.type not in (c.BIND, c.DESCRIBE):
                continue
            name = _bound(msg)
            if name is None or name in parsed_here:
                continue
            parsed_here.add(name)
            wanted = client.get(name)
            had = self._known.get(name)
            if wanted is None or (had is not None and had[1].body == wanted[1].body):
                continue
            close = CloseOrDescribe("S", name).build_close()
            out += [Message(close[0], close[5:]), wanted[1]]
            self._known.parsed(*wanted)
        return out
