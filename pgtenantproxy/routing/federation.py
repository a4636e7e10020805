"""Federated reads: one read on unified that also reads the shops whose rows left it.

Once a shop is cut over (or retired), its rows live on its own database;
unified holds, through ``postgres_fdw``, a foreign table per tenant table of
that shop (:mod:`pgtenantproxy.lifecycle.federation`). :func:`federate`
rewrites the SQL text of a read so that every reference to a tenant table
reads the union of its sources, and PostgreSQL plans and runs the rest
(joins with global tables, aggregates, sorting, windows) with its own
semantics::

    repairs r
    -> (SELECT * FROM (SELECT <cols> FROM repairs WHERE <shops still on unified>
                       UNION ALL SELECT <cols> FROM <shop 16's foreign table>
                       UNION ALL ...) AS federated
        WHERE <guard>) AS r

Invariants:

* each shop is read from exactly one place: unified's part excludes every
  moved shop (its reverse-mirrored copy is never counted), and only the moved
  shops the statement may touch get a foreign part (``Scope.shops``: its pins,
  or every shop); the caller fixes the moved set from one catalog snapshot, so
  the statement sees one phase per shop;
* the text is changed only at table references (byte offsets from the parse
  tree; names as written stay, so search_path resolves them as before);
  anything this module cannot place exactly (a CTE with a tenant table's
  name, ``ONLY (...)``, a result that does not parse) raises
  :class:`CannotFederate`: the caller refuses, never runs a partial read;
* the guard (a function on unified) fails the statement with 0A000 outside
  READ COMMITTED: a snapshot cannot span databases.

Sans-IO: text in, text out. Quoting goes through :mod:`pgtenantproxy.sqltext`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import pglast.parser as pg

from pgtenantproxy.routing.tables import DEFAULT_SCHEMA, is_tenant_table
from pgtenantproxy.sqltext import ident

#: (shop, table label ``schema.table``) -> the foreign table's name as SQL (quoted).
ForeignName = Callable[[int, str], str]

_IDENT_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$") | frozenset(
    range(0x80, 0x100))
_SPACE = frozenset(b" \t\n\r\f\v")


class CannotFederate(Exception):
    """The statement cannot be rewritten exactly; the message says why (for the client's error)."""


@dataclass(frozen=True)
class FederationFacts:
    """What rewriting needs from the catalog (one snapshot)."""

    #: tenant table label -> its column names, in order (unified's catalog).
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Shops whose foreign tables match unified's tables now.
    ready: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Sources:
    """Where one statement's tenant rows are, fixed for the statement."""

    #: Shops whose rows live on their own database (tenant_primary, retired).
    moved: frozenset[int]
    #: The shops the statement may touch (its pins); None: every shop.
    shops: frozenset[int] | None
    tenant_column: str
    foreign_name: ForeignName
    guard: str

    @property
    def remote(self) -> frozenset[int]:
        """The moved shops this statement reads from their own databases."""
        return self.moved if self.shops is None else self.moved & self.shops


def needs_federation(moved: Set[int], shops: frozenset[int] | None) -> bool:
    return bool(moved) and (shops is None or not moved.isdisjoint(shops))


def federate(sql: str, plans: Mapping[int, Sources], facts: FederationFacts, tenant_tables: Set[str],
             shadowed: Set[str] = frozenset()) -> str:
    """``sql`` with every tenant-table reference of the statements in ``plans`` (by index in the text)
    reading all its sources. Raises :class:`CannotFederate`."""
    raw = sql.encode()
    try:
        tree = json.loads(pg.parse_sql_json(sql))
    except pg.ParseError as exc:
        raise CannotFederate(f"parse error: {exc}") from None
    edits: list[tuple[int, int, bytes]] = []
    for index, entry in enumerate(tree["stmts"]):
        sources = plans.get(index)
        if sources is None:
            continue
        stmt = entry["stmt"]
        ctes = set(_cte_names(stmt))
        for rv in _range_vars(stmt):
            name = _label(rv)
            written = name if rv.get("schemaname") is None else f"{rv['schemaname']}.{rv['relname']}"
            if rv.get("catalogname") is None and rv.get("schemaname") is None and rv["relname"] in shadowed:
                continue
            if not is_tenant_table(written, tenant_tables):
                continue
            if rv.get("schemaname") is None and rv["relname"] in ctes:
                raise CannotFederate(f"a WITH query is named like the tenant table {rv['relname']}")
            edits.append(_edit(raw, rv, name, sources, facts))
    if not edits:
        return sql
    out = _splice(raw, edits).decode()
    try:
        pg.parse_sql_json(out)
    except pg.ParseError as exc:
        raise CannotFederate(f"the rewritten text does not parse ({exc})") from None
    return out


def _edit(raw: bytes, rv: Mapping[str, Any], label: str, sources: Sources,
          facts: FederationFacts) -> tuple[int, int, bytes]:
    columns = facts.columns.get(label)
    if not columns:
        raise CannotFederate(f"the columns of {label} are not known yet")
    parts = [p for p in (rv.get("catalogname"), rv.get("schemaname"), rv["relname"]) if p is not None]
    start, end = _name_span(raw, rv["location"], parts)
    only = not rv.get("inh", False)
    if only:
        start = _only_start(raw, start)
    name_sql = raw[start:end].decode()  # as written (ONLY kept): search_path resolves it as before
    cols = ", ".join(ident(c) for c in columns)
    arms = [f"SELECT {cols} FROM {name_sql} WHERE {_unified_filter(sources)}"]
    arms += [f"SELECT {cols} FROM {sources.foreign_name(shop, label)}" for shop in sorted(sources.remote)]
    text = f"(SELECT * FROM ({' UNION ALL '.join(arms)}) AS pgtenantproxy_federated WHERE {sources.guard})"
    if rv.get("alias") is None:
        text += f" AS {ident(rv['relname'])}"
    return start, end, text.encode()


def _unified_filter(sources: Sources) -> str:
    column = ident(sources.tenant_column)
    if sources.shops is None:
        moved = ", ".join(str(s) for s in sorted(sources.moved))
        return f"({column} IS NULL OR {column} NOT IN ({moved}))"
    local = sorted(sources.shops - sources.moved)
    if not local:
        return "false"
    return f"{column} IN ({', '.join(str(s) for s in local)})"


def _label(rv: Mapping[str, Any]) -> str:
    return f"{rv.get('schemaname') or DEFAULT_SCHEMA}.{rv['relname']}"


def _range_vars(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every RangeVar a statement reads (INTO targets aside)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "RangeVar":
                    yield value
                elif key != "intoClause":
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _cte_names(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cte = item.get("CommonTableExpr")
            if isinstance(cte, dict) and "ctename" in cte:
                yield cte["ctename"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _name_span(raw: bytes, start: int, parts: Sequence[str]) -> tuple[int, int]:
    """The bytes of a (possibly qualified, possibly quoted) name written at ``start``."""
    pos = start
    for i, expected in enumerate(parts):
        if i:
            pos = _skip_space(raw, pos)
            if pos >= len(raw) or raw[pos] != ord("."):
                raise CannotFederate("a table name the proxy cannot read back")
            pos = _skip_space(raw, pos + 1)
        found, pos = _identifier(raw, pos)
        if found != expected:
            raise CannotFederate("a table name the proxy cannot read back")
    return start, pos


def _identifier(raw: bytes, pos: int) -> tuple[str | None, int]:
    if pos < len(raw) and raw[pos] == ord('"'):
        out = bytearray()
        pos += 1
        while pos < len(raw):
            if raw[pos] == ord('"'):
                if pos + 1 < len(raw) and raw[pos + 1] == ord('"'):
                    out.append(ord('"'))
                    pos += 2
                    continue
                return out.decode(), pos + 1
            out.append(raw[pos])
            pos += 1
        return None, pos
    end = pos
    while end < len(raw) and raw[end] in _IDENT_CHARS:
        end += 1
    word = raw[pos:end].decode()
    return (_fold(word) if word else None), end


def _fold(word: str) -> str:
    """PostgreSQL's folding of an unquoted identifier: ASCII letters to lower case."""
    return "".join(ch.lower() if ch.isascii() else ch for ch in word)


def _skip_space(raw: bytes, pos: int) -> int:
    while pos < len(raw) and raw[pos] in _SPACE:
        pos += 1
    return pos


def _only_start(raw: bytes, start: int) -> int:
    """Where the ``ONLY`` before a name starts (the union replaces it; unified's part keeps it)."""
    pos = start
    while pos > 0 and raw[pos - 1] in _SPACE:
        pos -= 1
    word = raw[max(0, pos - 4):pos]
    if word.lower() != b"only" or (pos > 4 and raw[pos - 5] in _IDENT_CHARS):
        raise CannotFederate("ONLY with a parenthesized table name")
    return pos - 4


def _splice(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    last = 0
    for start, end, text in sorted(edits):
        if start < last:
            raise CannotFederate("overlapping table references")
        out += raw[last:start] + text
        last = end
    return bytes(out + raw[last:])
