"""Name scopes of a query walk, and the small pure helpers the walker uses.

A :class:`Scope` is one query level (a SELECT, a set-operation arm, a CTE body,
a subquery): its FROM items by the name SQL refers to them (alias, else table
name), the CTE names visible in it, and the owner of an unqualified tenant
column. Names are looked up innermost scope first, as PostgreSQL does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgtenantproxy.routing.model import ShopRef
from pgtenantproxy.routing.values import array_elements, single_array_element

Node = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ref:
    """Whose tenant column a name stands for: an occurrence, or (derived) a CTE/subquery
    output column whose values come from that occurrence's rows."""

    occ: int
    derived: bool = False


Column = tuple[Ref, bool]  # (whose tenant column, found in the current scope rather than an outer one)


class Item:
    __slots__ = ("name", "ref", "schema")

    def __init__(self, name: str, schema: str | None, ref: Ref | None) -> None:
        self.name, self.schema, self.ref = name, schema, ref

    def matches(self, qual: list[str]) -> bool:
        if len(qual) == 1:
            return self.name == qual[0]
        return self.schema is not None and [self.schema, self.name] == qual[-2:]


class Scope:
    __slots__ = ("ctes", "items", "owner", "parent")

    def __init__(self, parent: Scope | None, ctes: dict[str, int | None] | None = None) -> None:
        self.parent = parent
        self.ctes: dict[str, int | None] = ctes or {}  # CTE name -> occurrence of its shop_id output
        self.items: list[Item] = []
        self.owner: Ref | None = None  # whose column an unqualified tenant column is

    def cte(self, name: str) -> tuple[bool, int | None]:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True, scope.ctes[name]
            scope = scope.parent
        return False, None

    def find(self, qual: list[str]) -> tuple[bool, Ref | None]:
        found = [item for item in self.items if item.matches(qual)]
        if not found:
            return False, None
        return True, (found[0].ref if len(found) == 1 else None)


@dataclass
class Side:
    occs: list[int]  # the real occurrences of a FROM entry (a join's, all of them)
    owner: Ref | None


@dataclass
class Occ:
    table: str
    written: bool
    direct: list[ShopRef] = field(default_factory=list)


def strings(nodes: Any) -> list[str]:
    return [n["String"]["sval"] for n in nodes or () if isinstance(n, dict) and "String" in n]


def alias_of(body: Node) -> str | None:
    alias = body.get("alias")
    return alias.get("aliasname") if isinstance(alias, dict) else None


def conjuncts(expr: Any) -> list[Any]:
    if isinstance(expr, dict) and "BoolExpr" in expr and expr["BoolExpr"].get("boolop") == "AND_EXPR":
        return [c for arg in expr["BoolExpr"].get("args", ()) for c in conjuncts(arg)]
    return [expr]


def shop_list(a: Node) -> list[Any] | None:
    """The value nodes of ``column IN (v1, v2, ...)`` or ``column = ANY(ARRAY[...] | '{...}')`` with
    several values (one value is an equality: :func:`equality_sides`)."""
    if strings(a.get("name")) not in (["="], ["pg_catalog", "="]):
        return None
    kind, rexpr = a.get("kind"), a.get("rexpr")
    if kind == "AEXPR_IN" and isinstance(rexpr, dict):
        items = list(rexpr.get("List", {}).get("items", ()))
        return items if len(items) > 1 else None
    if kind == "AEXPR_OP_ANY":
        elements = array_elements(rexpr)
        return elements if elements is not None and len(elements) > 1 else None
    return None


def array_param(a: Node) -> ShopRef | None:
    """``column = ANY($n)`` (or ``$n::int[]``): a pin on any element of the array parameter."""
    if strings(a.get("name")) not in (["="], ["pg_catalog", "="]) or a.get("kind") != "AEXPR_OP_ANY":
        return None
    node, cast = a.get("rexpr"), None
    if isinstance(node, dict) and "TypeCast" in node:
        type_name = node["TypeCast"].get("typeName", {})
        if not type_name.get("arrayBounds"):
            return None
        names = strings(type_name.get("names"))
        cast = names[-1] if names else None
        node = node["TypeCast"].get("arg")
    if isinstance(node, dict) and "ParamRef" in node and node["ParamRef"].get("number", 0) > 0:
        return ShopRef(param=node["ParamRef"]["number"], cast=cast, array=True)
    return None


def equality_sides(a: Node) -> tuple[Any, Any, bool] | None:
    """(column side, value side, may be reversed) of a tenant-column equality candidate."""
    names = strings(a.get("name"))
    if names not in (["="], ["pg_catalog", "="]):
        return None
    kind, lexpr, rexpr = a.get("kind"), a.get("lexpr"), a.get("rexpr")
    if kind in ("AEXPR_OP", "AEXPR_NOT_DISTINCT"):
        return lexpr, rexpr, True
    if kind == "AEXPR_IN" and isinstance(rexpr, dict):
        items = rexpr.get("List", {}).get("items", ())
        return (lexpr, items[0], False) if len(items) == 1 else None
    if kind == "AEXPR_OP_ANY":
        element = single_array_element(rexpr)
        return (lexpr, element, False) if element is not None else None
    return None
