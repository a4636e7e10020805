"""Which of the client's prepared statements the unified server has, as it has them.

The session's own (unified) connection does not see every Parse the client
sends: a unit may run on a tenant connection (read routing, a cut-over shop's
transaction, a lazy BEGIN replayed there). :class:`UnifiedStatements` records
what was sent to unified (the same rules as
:class:`~pgtenantproxy.session.statements.PreparedStatements`), and
:meth:`UnifiedStatements.preparation` gives the Close + Parse messages a unit
needs first when it binds or describes a statement unified lacks (or has with
another text). The machine sends them in a batch of its own, answers skipped,
only at a Sync boundary (never inside the client's unfinished batch). Sans-IO.
"""

from __future__ import annotations

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.messages import CloseOrDescribe
from pgtenantproxy.session.statements import PreparedStatements


class UnifiedStatements:
    def __init__(self) -> None:
        self._known = PreparedStatements()

    def sent(self, unit: Unit) -> None:
        """``unit`` went to unified: its Parse / Close / DEALLOCATE act there."""
        track = self._known.track
        for msg in unit.messages:
            if msg.type in (c.PARSE, c.CLOSE, c.QUERY):
                track(msg)

    def preparation(self, unit: Unit, client: PreparedStatements, *, record: bool = True) -> bytes:
        """Close + Parse for the statements ``unit`` uses that unified lacks (recorded as sent
        unless ``record`` is false: then it only tells whether some are needed)."""
        out: list[bytes] = []
        parsed_here: set[str] = set()
        for msg in unit.messages:
            if msg.type == c.PARSE:
                parsed_here.add(msg.name)
                if msg.name and self._known.get(msg.name) is not None:
                    # unified still has a statement the client dropped where unified did not see it
                    # (a DEALLOCATE the proxy answered, a Close on a shop's database): closed first
                    out.append(CloseOrDescribe("S", msg.name).build_close())
                    if record:
                        self._known.closed(msg.name)
                continue
            name = msg.statement
            if name is None or name in parsed_here:
                continue
            parsed_here.add(name)
            wanted = client.get(name)
            had = self._known.get(name)
            if wanted is None or (had is not None and had.body == wanted.body):
                continue
            out += [CloseOrDescribe("S", name).build_close(), wanted.raw()]
            if record:
                self._known.parsed(wanted)
        return b"".join(out)
