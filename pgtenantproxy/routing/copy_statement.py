"""A parsed ``CopyStmt`` -> :class:`~pgtenantproxy.routing.model.CopyTarget` (pure).

Reads what libpg_query gives for both option syntaxes (``WITH (FORMAT csv, HEADER
true)`` and the old ``CSV HEADER DELIMITER AS ','``): the table (as written), the
column list, the direction, STDIN/STDOUT or a server-side file or program, and
the options that say how the data is laid out. Values are kept as written;
nothing is validated here (PostgreSQL does that when the statement runs).
"""

from __future__ import annotations

from typing import Any

from pgtenantproxy.routing.model import CopyTarget

Node = dict[str, Any]

_READ = frozenset({"format", "delimiter", "null", "quote", "escape", "header", "encoding"})
_TRUE = frozenset({"true", "on", "1", "yes", "match"})


def copy_target(body: Node, tenant_column: str) -> CopyTarget:
    relation = body.get("relation")
    table = None
    if isinstance(relation, dict):
        parts = (relation.get("catalogname"), relation.get("schemaname"), relation.get("relname", ""))
        table = ".".join(p for p in parts if p)
    attlist = body.get("attlist")
    columns = tuple(_string(a) for a in attlist) if attlist else None
    index = columns.index(tenant_column) if columns is not None and tenant_column in columns else None
    values: dict[str, Any] = {}
    other: list[str] = []
    for option in body.get("options") or ():
        elem = option.get("DefElem", {}) if isinstance(option, dict) else {}
        name = str(elem.get("defname", "")).lower()
        if name in _READ:
            values[name] = _value(elem.get("arg"))
        else:
            other.append(name)
    if body.get("whereClause") is not None:
        other.append("where")
    header = values.get("header")
    return CopyTarget(
        table,
        columns,
        index,
        is_from=bool(body.get("is_from")),
        stdio=body.get("filename") is None and not body.get("is_program"),
        format=str(values.get("format") or "text").lower(),
        delimiter=_text(values.get("delimiter")),
        null=_text(values.get("null")),
        quote=_text(values.get("quote")),
        escape=_text(values.get("escape")),
        header="header" in values and (header is None or str(header).lower() in _TRUE),
        encoding=_text(values.get("encoding")),
        other=tuple(other),
    )


def _string(node: Any) -> str:
    return str(node.get("String", {}).get("sval", "")) if isinstance(node, dict) else str(node)


def _value(arg: Any) -> str | None:
    """An option's argument as text (a bare option, ``HEADER``, has none)."""
    if not isinstance(arg, dict):
        return None
    if "String" in arg:
        return str(arg["String"].get("sval", ""))
    if "Boolean" in arg:
        return "true" if arg["Boolean"].get("boolval") else "false"
    if "Integer" in arg:
        return str(arg["Integer"].get("ival", 0))
    return "?"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
