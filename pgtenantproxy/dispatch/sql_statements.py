"""A session's SQL-level prepared statements, so ``EXECUTE`` is routed as the query it runs.

``PREPARE name AS query`` is remembered (it runs where the session's statement
goes: unified, or answered by the proxy inside a transaction on a shop's
database); ``EXECUTE name(args)`` is routed as ``query`` with ``args`` bound, and a
unit sent to a shop's database carries the ``PREPARE`` (and a ``DEALLOCATE``
for a connection that holds another text under the name) so the tenant unit
defines it there first; ``DEALLOCATE name | ALL`` and ``DISCARD ALL`` forget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgtenantproxy.routing import BatchItem
from pgtenantproxy.routing.identify import BoundParams
from pgtenantproxy.routing.sql_prepared import PreparedSql, definition, execution
from pgtenantproxy.sqltext import ident

_FORGET = re.compile(r"\s*(?:deallocate\s+(?:prepare\s+)?(?P<name>\S+?)|(?P<discard>discard\s+all))\s*;?\s*$",
                     re.IGNORECASE)

Prepare = tuple[str, str, str]  # name, its PREPARE, its DEALLOCATE


@dataclass
class SqlStatements:
    known: dict[str, PreparedSql] = field(default_factory=dict)

    def substitute(self, items: Sequence[BatchItem]) -> tuple[list[BatchItem], tuple[Prepare, ...]]:
        """The items to route (an EXECUTE as its query) and the PREPAREs a shop's database needs."""
        out: list[BatchItem] = []
        needs: list[Prepare] = []
        for item in items:
            sql = item.sql
            head = sql[:24].lstrip()[:1]
            if head not in ("p", "P", "e", "E", "d", "D") or item.params is not None:
                out.append(item)
                continue
            found = self._one(sql)
            if found is None:
                out.append(item)
                continue
            routed, prepared = found
            out.append(routed)
            needs.append((prepared.name, prepared.sql, f"DEALLOCATE {ident(prepared.name)}"))
        return out, tuple(needs)

    def _one(self, sql: str) -> tuple[BatchItem, PreparedSql] | None:
        """Record a PREPARE or a DEALLOCATE; an EXECUTE of a known statement as (its query, it)."""
        prepared = definition(sql)
        if prepared is not None:
            self.known[prepared.name] = prepared
            return None
        run = execution(sql)
        if run is not None:
            target = self.known.get(run.name)
            if target is None:
                return None  # not prepared through the proxy: it runs where the session's server is
            params = None if run.args is None else BoundParams(
                tuple(None if a is None else a.encode() for a in run.args))
            return BatchItem(target.query, params), target
        forget = _FORGET.match(sql)
        if forget is not None:
            name = forget.group("name")
            if forget.group("discard") or (name or "").upper() == "ALL":
                self.known.clear()
            elif name:
                self.known.pop(name[1:-1].replace('""', '"') if name.startswith('"') else name.lower(), None)
        return None
