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
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.messages import Bind, Execute, Parse, Query
from pgtenantproxy.routing import BatchItem, BoundParams
from pgtenantproxy.server.statements import PreparedStatements


def unit_items(unit: Unit, statements: PreparedStatements) -> list[BatchItem] | None:
    if unit.kind == "query":
        return [BatchItem(Query.parse(unit.messages[0].body).sql)]
    parsed: dict[str, Parse] = {}
    portals: dict[str, tuple[Parse, Bind]] = {}
    items: list[BatchItem] = []
    for msg in unit.messages:
        if msg.type == c.PARSE:
            parse = Parse.parse(msg.body)
            parsed[parse.name] = parse
        elif msg.type == c.BIND:
            bind = Bind.parse(msg.body)
            source = parsed.get(bind.statement)
            if source is None:
                record = statements.get(bind.statement)
                if record is None:
                    return None
                source = record[0]
            portals[bind.portal] = (source, bind)
        elif msg.type == c.EXECUTE:
            found = portals.get(Execute.parse(msg.body).portal)
            if found is None:
                return None
            parse, bind = found
            params = BoundParams(bind.params, bind.param_formats, parse.param_types)
            items.append(BatchItem(parse.sql, params))
    return items
