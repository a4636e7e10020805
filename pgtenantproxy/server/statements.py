"""The client's prepared statements, as the proxy must know them to re-prepare.

Every Parse the client sends is recorded (name -> the Parse message itself), so
a batch that binds a statement can run on a tenant connection that never saw
it: the router re-sends the recorded Parse there first. Close (statement),
``DEALLOCATE name|ALL`` and ``DISCARD ALL`` forget them, as the server does.

A Parse is recorded when sent; if the server rejects it the name is simply
unknown to the server too, and a Bind of it fails on unified as it would
direct (the router sends batches with unknown statements to unified).
"""

from __future__ import annotations

import re

from pgtenantproxy.protocol.framing import Message
from pgtenantproxy.protocol.messages import Parse

_DEALLOCATE = re.compile(
    r"""^\s*(?:DEALLOCATE\s+(?:PREPARE\s+)?(?P<name>ALL|"(?:[^"]|"")+"|[^\s;]+)|(?P<discard>DISCARD\s+ALL))\s*;?\s*$""",
    re.IGNORECASE,
)


class PreparedStatements:
    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Parse, Message]] = {}

    def parsed(self, parse: Parse, msg: Message) -> None:
        self._by_name[parse.name] = (parse, msg)

    def closed(self, name: str) -> None:
        self._by_name.pop(name, None)

    def get(self, name: str) -> tuple[Parse, Message] | None:
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
