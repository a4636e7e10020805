"""SQL-level ``PREPARE name AS ...`` / ``EXECUTE name(args)``, read so EXECUTE can be routed (pure).

psql and some apps prepare with SQL rather than the protocol. ``PREPARE``
defines a statement on the server it runs on and touches no row; ``EXECUTE``
runs it there. The router reads ``EXECUTE name(1, 'x')`` as the prepared query
with its arguments bound (text values), so it is routed like the query itself
(a shop's rows go to the shop's database, which gets the ``PREPARE`` first).
Arguments that are not plain constants leave the parameters unresolved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg

_PREPARE = re.compile(r"\s*prepare\s", re.IGNORECASE)
_EXECUTE = re.compile(r"\s*execute\s", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PreparedSql:
    name: str  # as the server stores it (folded unless quoted)
    sql: str  # the whole PREPARE statement
    query: str  # the statement it prepares


@dataclass(frozen=True, slots=True)
class Execution:
    name: str
    #: the arguments as text (None for NULL); None when some argument is not a plain constant
    args: tuple[str | None, ...] | None


def is_prepare(sql: str) -> bool:
    """Does the text start with PREPARE (a definition: it touches no row)?"""
    return _PREPARE.match(sql) is not None


def _only_statement(sql: str, key: str) -> dict[str, Any] | None:
    try:
        stmts = json.loads(pg.parse_sql_json(sql))["stmts"]
    except Exception:  # not ours to judge: the server answers the error
        return None
    if len(stmts) != 1:
        return None
    node: dict[str, Any] | None = stmts[0]["stmt"].get(key)
    return node


def definition(sql: str) -> PreparedSql | None:
    """A one-statement ``PREPARE`` text's name and query, else None."""
    if _PREPARE.match(sql) is None:
        return None
    node = _only_statement(sql, "PrepareStmt")
    if node is None or "name" not in node:
        return None
    depth = 0
    for token in pg.scan(sql):
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
        elif token.name == "AS" and depth == 0:
            query = sql[token.end + 1:].strip().rstrip(";").strip()  # scanner offsets count characters
            return PreparedSql(node["name"], sql.strip().rstrip(";").strip(), query)
    return None


def execution(sql: str) -> Execution | None:
    """A one-statement ``EXECUTE`` text's name and constant arguments, else None."""
    if _EXECUTE.match(sql) is None:
        return None
    node = _only_statement(sql, "ExecuteStmt")
    if node is None or "name" not in node:
        return None
    args: list[str | None] = []
    for param in node.get("params", ()):
        value = _constant(param)
        if value is _NOT_CONSTANT:
            return Execution(node["name"], None)
        args.append(value)  # type: ignore[arg-type]
    return Execution(node["name"], tuple(args))


_NOT_CONSTANT = object()


def _constant(node: Any) -> object:
    if isinstance(node, dict) and "TypeCast" in node:
        return _constant(node["TypeCast"].get("arg"))
    const = node.get("A_Const") if isinstance(node, dict) else None
    if const is None:
        return _NOT_CONSTANT
    if const.get("isnull"):
        return None
    for kind in ("ival", "fval", "sval"):
        if kind in const:
            return str(const[kind].get(kind, 0 if kind == "ival" else ""))
    if "boolval" in const:
        return "true" if const["boolval"].get("boolval") else "false"
    return _NOT_CONSTANT
