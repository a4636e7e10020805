"""A client unit as the routing core sees it: the SQL (and Bind values) it executes.

A simple Query is one item (its text may hold several statements). In an
extended-protocol batch each Execute is one item: the SQL of the statement its
portal was bound from (parsed in the same batch, or earlier in the session)
with that Bind's parameter values. ``None`` means the unit executes something
the proxy cannot see (a portal bound elsewhere, an unknown statement name), and
such a unit goes to unified.
"""

from __future__ import annotations

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.messages import Bind, Parse
from pgtenantproxy.routing import BatchItem, BoundParams
from pgtenantproxy.session.statements import PreparedStatements


def unit_items(unit: Unit, statements: PreparedStatements) -> list[BatchItem] | None:
    if unit.kind is UnitKind.QUERY:
        return [BatchItem(unit.messages[0].sql or "")]
    parsed: dict[str, Parse] = {}
    portals: dict[str, tuple[Parse, Bind]] = {}
    items: list[BatchItem] = []
    for msg in unit.messages:
        if msg.malformed:
            return None
        if msg.type == c.PARSE and msg.parse is not None:
            parsed[msg.name] = msg.parse
        elif msg.type == c.BIND and msg.bind is not None:
            source = parsed.get(msg.name)
            if source is None:
                record = statements.get(msg.name)
                if record is None or record.parse is None:
                    return None
                source = record.parse
            portals[msg.portal] = (source, msg.bind)
        elif msg.type == c.EXECUTE:
            found = portals.get(msg.portal)
            if found is None:
                return None
            parse, bind = found
            params = BoundParams(bind.params, bind.param_formats, parse.param_types)
            items.append(BatchItem(parse.sql, params))
    return items
