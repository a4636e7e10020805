"""A unit as unified must run it when its texts are rewritten (federated reads), sans-IO.

:func:`rewritten` replaces, by SQL text, the unit's simple Query and the Parse
messages it carries, and gives the statement registry unified must match for
the statements the unit binds but parsed earlier (the client's registry with
those entries rewritten). The client's own registry keeps its texts: a later
unit that binds the same name without a rewrite gets it parsed again as the
client wrote it (:mod:`.unified_statements` compares texts). Message for
message the unit is the same, so the client's answers are the same.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.messages import Parse, Query
from pgtenantproxy.protocol.records import ClientMessage
from pgtenantproxy.session.decision import Rewrites
from pgtenantproxy.session.statements import PreparedStatements


def rewritten(unit: Unit, rewrites: Rewrites, client: PreparedStatements) -> tuple[Unit, PreparedStatements]:
    texts = dict(rewrites)
    messages = [_message(msg, texts) for msg in unit.messages]
    parsed = {m.name for m in unit.messages if m.type == c.PARSE}
    registry = client
    for msg in unit.messages:
        name = msg.statement
        if name is None or name in parsed:
            continue
        known = registry.get(name)
        if known is None or known.sql not in texts:
            continue
        if registry is client:
            registry = client.copy()
        registry.parsed(_message(known, texts))
        parsed.add(name)
    return Unit(messages, complete=unit.complete, pinned=unit.pinned, kind=unit.kind), registry


def _message(msg: ClientMessage, texts: Mapping[str, str]) -> ClientMessage:
    sql = msg.sql
    if sql is None or sql not in texts:
        return msg
    if msg.type == c.QUERY:
        return ClientMessage.from_wire(Query(texts[sql]).build())
    if msg.type == c.PARSE and msg.parse is not None:
        return ClientMessage.from_wire(Parse(msg.name, texts[sql], msg.parse.param_types).build())
    return msg
