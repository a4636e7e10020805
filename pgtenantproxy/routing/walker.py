"""Scope-aware walk of one SELECT/INSERT/UPDATE/DELETE/MERGE parse tree.

Theory of operation. Each query level (a SELECT, a set-operation arm, a CTE
body, a subquery) is a *scope* holding its FROM items by the name they are
referred to (alias, else table name). Every table in a FROM clause, and every
written table, is an *occurrence*. The question for routing is, per
occurrence: which rows of that table can affect the result? They are *pinned*
to a shop when a tenant-column equality restricts them:

* ``x.shop_id = <shop>`` (also ``<shop> = x.shop_id``, ``IN (<shop>)``,
  ``= ANY('{<shop>}')``, ``IS NOT DISTINCT FROM``) among the AND-ed conditions
  of a WHERE, or of the ON of an inner join, pins ``x``. Conditions under OR or
  NOT, in HAVING, or anywhere else pin nothing. Conditions we do not read only
  filter further, so ignoring them is safe.
* ``a.shop_id = b.shop_id`` (or ``JOIN ... USING (shop_id)``) makes a and b
  share their pins.
* In the ON of an outer join only the nullable side is filtered: a pin applies
  to it alone, and an equality passes pins one way, from the preserved side to
  the nullable side. FULL joins pin nothing.
* A subquery's condition on an outer query's column (correlation) passes pins
  one way, from the outer occurrence to the inner one, never back.
* An unqualified tenant column belongs to the scope's only FROM item (or the
  merged column of a USING join); otherwise it is ambiguous and pins nothing.
  (Tenant tables are assumed to have the tenant column: if the only FROM item
  is a global table without it, the column is the outer one, but the global
  table sends the statement to unified anyway.)

A subquery in FROM or a CTE whose ``shop_id`` output column is plainly the
tenant column of one of its occurrences passes that occurrence's pins *out*,
one way, to whatever its column is equated with (``JOIN d ON d.shop_id =
cte.shop_id``). Pins never flow *into* it (no predicate push-down: a condition
on ``cte.shop_id`` pins nothing inside the CTE), which is the safe direction.

Anything the walker meets in a place it does not model (a table in an
expression, TABLESAMPLE, an unknown FROM item or join type) marks the
statement not understood.
"""

from __future__ import annotations

from typing import Any

from pgtenantproxy.routing import functions
from pgtenantproxy.routing.model import (
    SHOP_SETTING,
    UNKNOWN_REF,
    ColumnEdge,
    KeyCondition,
    KeyValue,
    SetShop,
    ShopRef,
    StatementAnalysis,
    StatementKind,
)
from pgtenantproxy.routing.model import TableOccurrence as Occurrence
from pgtenantproxy.routing.scope import (
    Column,
    Item,
    Node,
    Occ,
    Ref,
    Scope,
    Side,
    alias_of,
    array_param,
    conjuncts,
    equality_sides,
    shop_list,
    strings,
)
from pgtenantproxy.routing.values import const_value, int_text, key_list, key_value, value_ref

__all__ = ["SHOP_SETTING", "Node", "StatementWalker"]


_DML = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_MISPLACED = _DML | {"RangeVar", "JoinExpr", "RangeSubselect", "RangeFunction", "RangeTableSample"}
_JOINS = frozenset({"JOIN_INNER", "JOIN_LEFT", "JOIN_RIGHT", "JOIN_FULL"})
_SELECT_DONE = frozenset({"withClause", "fromClause", "whereClause", "larg", "rarg", "intoClause"})


class StatementWalker:
    """Walks one statement; :meth:`result` gives its :class:`StatementAnalysis`."""

    def __init__(self, tenant_column: str) -> None:
        self.col = tenant_column
        self.occs: list[Occ] = []
        self.undirected: list[tuple[int, int]] = []
        self.directed: list[tuple[int, int]] = []
        self.refs: list[ShopRef] = []
        self.unsafe: list[str] = []
        self.temp_tables: list[str] = []
        self.has_write = False
        self.has_locking = False
        self.set_shop: SetShop | None = None
        self.note: str | None = None
        self.keys: list[KeyCondition] = []
        self.edges: list[ColumnEdge] = []
        self._walked: set[int] = set()

    def fail(self, why: str) -> None:
        if self.note is None:
            self.note = why

    # -- statements ---------------------------------------------------------------------------

    def query(self, parent: Scope | None, node: Any) -> int | None:
        """A wrapped statement node where a query may stand (subquery, CTE body, top level).

        Returns the occurrence whose tenant column the query outputs as ``shop_id``, if plain.
        """
        if not isinstance(node, dict) or len(node) != 1:
            self.fail("unexpected query node")
            return None
        ((key, body),) = node.items()
        if key == "SelectStmt":
            scope = self.select(parent, body)
            return self._output(scope, body)
        if key == "InsertStmt":
            self.insert(parent, body)
        elif key in ("UpdateStmt", "DeleteStmt"):
            self.update_or_delete(parent, body, "usingClause" if key == "DeleteStmt" else "fromClause")
        elif key == "MergeStmt":
            self.merge(parent, body)
        else:
            self.fail(f"{key} where a query was expected")
        return None

    def select(self, parent: Scope | None, s: Node) -> Scope:
        scope = Scope(parent)
        self._with(scope, s.get("withClause"))
        if s.get("op", "SETOP_NONE") != "SETOP_NONE":
            self.select(scope, s.get("larg", {}))
            self.select(scope, s.get("rarg", {}))
        else:
            sides = [self.from_entry(scope, entry) for entry in s.get("fromClause", ())]
            scope.owner = sides[0].owner if len(sides) == 1 else None
            self.where(scope, s.get("whereClause"))
        if "intoClause" in s:
            rel = s["intoClause"].get("rel", {})
            self.has_write = True
            self.occurrence(rel, written=True)
            if rel.get("relpersistence") == "t":
                self.temp_tables.append(rel.get("relname", ""))
        if s.get("lockingClause"):
            self.has_locking = True  # FOR UPDATE/SHARE/...; its lockedRels name aliases, not tables
        for key, value in s.items():
            if key not in _SELECT_DONE and key != "lockingClause":
                self.expr(scope, value)
        return scope

    def _output(self, scope: Scope, s: Node) -> int | None:
        """The occurrence a SELECT's ``shop_id`` output column plainly comes from, or None."""
        if s.get("op", "SETOP_NONE") != "SETOP_NONE" or "valuesLists" in s:
            return None
        found: Ref | None = None
        for target in s.get("targetList", ()):
            rt = target.get("ResTarget", {}) if isinstance(target, dict) else {}
            value = rt.get("val")
            fields = value.get("ColumnRef", {}).get("fields", ()) if isinstance(value, dict) else ()
            names = strings(fields)
            if fields and "A_Star" in fields[-1]:  # * or alias.*
                ref = scope.find(names)[1] if names else scope.owner
            elif rt.get("name", names[-1] if names and len(names) == len(fields) else None) == self.col:
                column = self._column(scope, value)
                ref = column[0] if column is not None and column[1] else None
            else:
                continue
            if ref is None or (found is not None and found.occ != ref.occ):
                return None  # unknown or ambiguous: nothing flows out
            found = ref
        return found.occ if found is not None else None

    def insert(self, parent: Scope | None, ins: Node) -> None:
        scope = Scope(parent)
        self._with(scope, ins.get("withClause"))
        self.has_write = True
        rel = ins.get("relation", {})
        occ = self.occurrence(rel, written=True)
        cols = [c.get("ResTarget", {}).get("name") for c in ins.get("cols", ())]
        index = cols.index(self.col) if self.col in cols else None
        if ins.get("selectStmt") is not None:
            self._insert_source(scope, ins["selectStmt"], occ, index)
        scope.items.append(Item(alias_of(rel) or rel.get("relname", ""), None, Ref(occ)))
        scope.items.append(Item("excluded", None, Ref(occ)))  # ON CONFLICT's proposed row: same shop
        scope.owner = Ref(occ)
        conflict = ins.get("onConflictClause") or {}
        self._assignments(scope, conflict.get("targetList", ()), occ)
        for key, value in conflict.items():
            if key != "targetList":
                self.expr(scope, value)
        for key, value in ins.items():
            if key not in ("withClause", "relation", "cols", "selectStmt", "onConflictClause"):
                self.expr(scope, value)

    def _insert_source(self, scope: Scope, node: Node, occ: int, index: int | None) -> None:
        body = node.get("SelectStmt")
        if body is None:
            self.fail("INSERT source is not a query")
            return
        plain = body.get("op", "SETOP_NONE") == "SETOP_NONE" and not body.get("fromClause")
        if body.get("valuesLists") and plain and not body.get("withClause"):
            for row in body["valuesLists"]:
                items = row.get("List", {}).get("items", ())
                if index is not None:
                    self._write_ref(occ, value_ref(items[index]) if index < len(items) else UNKNOWN_REF)
                self.expr(scope, items)
            return
        source = self.select(scope, body)
        if index is None:
            return
        targets = body.get("targetList", ())
        if body.get("op", "SETOP_NONE") != "SETOP_NONE" or index >= len(targets):
            self._write_ref(occ, UNKNOWN_REF)
            return
        value = targets[index].get("ResTarget", {}).get("val")
        column = self._column(source, value)
        if column is not None and column[1]:
            self._flow(column[0], Ref(occ), both=False)  # the inserted shop is the source row's shop
        else:
            self._write_ref(occ, value_ref(value))

    def update_or_delete(self, parent: Scope | None, body: Node, from_key: str) -> None:
        scope = Scope(parent)
        self._with(scope, body.get("withClause"))
        self.has_write = True
        rel = body.get("relation", {})
        occ = self.occurrence(rel, written=True)
        scope.items.append(Item(alias_of(rel) or rel.get("relname", ""), None, Ref(occ)))
        sides = [self.from_entry(scope, entry) for entry in body.get(from_key, ())]
        scope.owner = None if sides else Ref(occ)
        self.where(scope, body.get("whereClause"))
        self._assignments(scope, body.get("targetList", ()), occ)
        for key, value in body.items():
            if key not in ("withClause", "relation", from_key, "whereClause", "targetList"):
                self.expr(scope, value)

    def merge(self, parent: Scope | None, body: Node) -> None:
        """MERGE writes; its target is recorded unpinned (MERGE never goes to a tenant)."""
        scope = Scope(parent)
        self._with(scope, body.get("withClause"))
        self.has_write = True
        rel = body.get("relation", {})
        occ = self.occurrence(rel, written=True)
        scope.items.append(Item(alias_of(rel) or rel.get("relname", ""), None, Ref(occ)))
        if body.get("sourceRelation") is not None:
            self.from_entry(scope, body["sourceRelation"])
        for key, value in body.items():
            if key not in ("withClause", "relation", "sourceRelation"):
                self.expr(scope, value)

    def _with(self, scope: Scope, clause: Node | None) -> None:
        if not clause:
            return
        ctes = [c.get("CommonTableExpr", {}) for c in clause.get("ctes", ())]
        names = [c.get("ctename", "") for c in ctes]
        recursive = bool(clause.get("recursive"))
        sources: dict[str, int | None] = dict.fromkeys(names) if recursive else {}
        for name, cte in zip(names, ctes, strict=True):
            source = self.query(Scope(scope.parent, dict(sources)), cte.get("ctequery"))
            sources[name] = None if recursive else source
        scope.ctes = sources

    # -- FROM ---------------------------------------------------------------------------------

    def from_entry(self, scope: Scope, node: Any) -> Side:
        if not isinstance(node, dict) or len(node) != 1:
            self.fail("unexpected FROM item")
            return Side([], None)
        ((key, body),) = node.items()
        if key == "RangeVar":
            return self._range_var(scope, body)
        if key == "JoinExpr":
            return self._join(scope, body)
        ref: Ref | None = None
        if key == "RangeSubselect":
            source = self.query(scope, body.get("subquery"))
            ref = None if source is None else Ref(source, derived=True)
        elif key in ("RangeFunction", "RangeTableFunc", "JsonTable"):
            for k, v in body.items():
                if k != "alias":
                    self.expr(scope, v)
        else:
            self.fail(f"{key} in FROM")
            return Side([], None)
        scope.items.append(Item(alias_of(body) or "", None, ref))
        return Side([], ref)

    def _range_var(self, scope: Scope, rv: Node) -> Side:
        name, schema, alias = rv.get("relname", ""), rv.get("schemaname"), alias_of(rv)
        is_cte, source = scope.cte(name) if schema is None else (False, None)
        if is_cte:
            ref = None if source is None else Ref(source, derived=True)
            scope.items.append(Item(alias or name, None, ref))
            return Side([], ref)
        occ = self.occurrence(rv, written=False)
        scope.items.append(Item(alias or name, None if alias else schema, Ref(occ)))
        return Side([occ], Ref(occ))

    def _join(self, scope: Scope, j: Node) -> Side:
        start = len(scope.items)
        left = self.from_entry(scope, j.get("larg"))
        right = self.from_entry(scope, j.get("rarg"))
        jointype = j.get("jointype", "JOIN_INNER")
        if jointype not in _JOINS:
            self.fail(f"join type {jointype}")
            return Side(left.occs + right.occs, None)
        owner = self._using(j, jointype, left, right)
        quals = j.get("quals")
        if quals is not None:
            if jointype == "JOIN_INNER":
                self.constrain(scope, quals, None)
            elif jointype == "JOIN_LEFT":
                self.constrain(scope, quals, frozenset(right.occs))
            elif jointype == "JOIN_RIGHT":
                self.constrain(scope, quals, frozenset(left.occs))
            self.expr(scope, quals)
        alias = alias_of(j)
        if alias is not None:  # an aliased join hides its members' names
            del scope.items[start:]
            scope.items.append(Item(alias, None, owner))
        return Side(left.occs + right.occs, owner)

    def _using(self, j: Node, jointype: str, left: Side, right: Side) -> Ref | None:
        """Edges of ``USING (tenant_column)``; whose column the merged column is."""
        if j.get("isNatural") or self.col not in strings(j.get("usingClause")):
            return None
        lo, ro = left.owner, right.owner
        if lo is None or ro is None:
            return None
        if jointype == "JOIN_INNER":
            self._flow(lo, ro, both=True)
            return ro if lo.derived and not ro.derived else lo
        if jointype == "JOIN_LEFT":
            self._flow(lo, ro, both=False)
            return lo
        if jointype == "JOIN_RIGHT":
            self._flow(ro, lo, both=False)
            return ro
        return None

    def _flow(self, a: Ref, b: Ref, *, both: bool) -> None:
        """Pins flow from a to b (and back when ``both``); never into a derived column."""
        if a.occ == b.occ:
            return
        if both and not a.derived and not b.derived:
            self.undirected.append((a.occ, b.occ))
        elif both and b.derived and not a.derived:
            self.directed.append((b.occ, a.occ))
        elif not b.derived:
            self.directed.append((a.occ, b.occ))

    def occurrence(self, rv: Node, *, written: bool) -> int:
        parts = (rv.get("catalogname"), rv.get("schemaname"), rv.get("relname", ""))
        self.occs.append(Occ(".".join(p for p in parts if p), written))
        return len(self.occs) - 1

    # -- conditions and pins ------------------------------------------------------------------

    def where(self, scope: Scope, clause: Any) -> None:
        if clause is not None:
            self.constrain(scope, clause, None)
            self.expr(scope, clause)

    def constrain(self, scope: Scope, expr: Any, nullable: frozenset[int] | None) -> None:
        """Pins from AND-ed conditions; ``nullable`` is the filtered side of an outer join's ON."""
        for conj in conjuncts(expr):
            a = conj.get("A_Expr") if isinstance(conj, dict) else None
            sides = equality_sides(a) if a is not None else None
            left = right = None
            if sides is not None:
                lhs, rhs, reversible = sides
                left, right = self._column(scope, lhs), self._column(scope, rhs)
                if left is not None and right is not None:
                    self._link(left, right, nullable)
                elif left is not None:
                    self._pin(left, value_ref(rhs), nullable)
                elif right is not None and reversible:
                    self._pin(right, value_ref(lhs), nullable)
            if left is None and right is None and not self._shop_list(scope, a, nullable):
                self._key_conjunct(scope, conj, nullable)

    def _shop_list(self, scope: Scope, a: Node | None, nullable: frozenset[int] | None) -> bool:
        """``x.shop_id IN (v1, v2, ...)`` / ``= ANY('{v1,v2}')``: x is pinned to any of them (all values
        known, or nothing is pinned: a subset would be wrong)."""
        if a is None:
            return False
        items = shop_list(a)
        array = array_param(a)
        column = self._column(scope, a.get("lexpr")) if items is not None or array is not None else None
        if column is None:
            return False
        refs = [array] if array is not None else [value_ref(item) for item in items or ()]
        if all(ref.known for ref in refs):
            for ref in refs:
                self._pin(column, ref, nullable)
        return True

    # -- keys and column equalities (routing by key, pins along foreign keys) -----------------

    def _key_conjunct(self, scope: Scope, conj: Any, nullable: frozenset[int] | None) -> None:
        """``t.key = value``, ``IN (...)``, ``= ANY(...)``, ``a.x = b.y``, ``x IN (SELECT y ...)``."""
        if not isinstance(conj, dict):
            return
        if "SubLink" in conj:
            self._in_subquery(scope, conj["SubLink"], nullable)
            return
        a = conj.get("A_Expr")
        if a is None or strings(a.get("name")) not in (["="], ["pg_catalog", "="]):
            return
        kind, lexpr, rexpr = a.get("kind"), a.get("lexpr"), a.get("rexpr")
        left = self._any_column(scope, lexpr)
        values: tuple[KeyValue, ...] | None = None
        if kind in ("AEXPR_OP", "AEXPR_NOT_DISTINCT"):
            right = self._any_column(scope, rexpr)
            if left is not None and right is not None:
                self._edge(left, right, nullable)
                return
            column, other = (left, rexpr) if left is not None else (right, lexpr)
            value = key_value(other)
            values = (value,) if value is not None else None
        elif kind == "AEXPR_IN" and isinstance(rexpr, dict):
            column = left
            found = [key_value(item) for item in rexpr.get("List", {}).get("items", ())]
            values = tuple(v for v in found if v is not None) if found and None not in found else None
        elif kind == "AEXPR_OP_ANY":
            column, values = left, key_list(rexpr)
        else:
            return
        if column is None or values is None:
            return
        ref, local, name = column
        if local and not ref.derived and name != self.col and (nullable is None or ref.occ in nullable):
            self.keys.append(KeyCondition(ref.occ, name, values))

    def _edge(
        self, a: tuple[Ref, bool, str], b: tuple[Ref, bool, str], nullable: frozenset[int] | None
    ) -> None:
        (ra, la, na), (rb, lb, nb) = a, b
        if ra.derived or rb.derived or ra.occ == rb.occ or self.col in (na, nb) or not (la or lb):
            return
        if not la or not lb:  # correlation: from the outer occurrence to the inner one
            (outer, oc), (inner, ic) = ((ra, na), (rb, nb)) if lb else ((rb, nb), (ra, na))
            if nullable is None or inner.occ in nullable:
                self.edges.append(ColumnEdge(outer.occ, oc, inner.occ, ic, both=False))
        elif nullable is None or (ra.occ in nullable and rb.occ in nullable):
            self.edges.append(ColumnEdge(ra.occ, na, rb.occ, nb))
        elif rb.occ in nullable:
            self.edges.append(ColumnEdge(ra.occ, na, rb.occ, nb, both=False))
        elif ra.occ in nullable:
            self.edges.append(ColumnEdge(rb.occ, nb, ra.occ, na, both=False))

    def _in_subquery(self, scope: Scope, link: Node, nullable: frozenset[int] | None) -> None:
        """``outer.x IN (SELECT inner.y ...)``: the outer rows that count match a row of the inner one."""
        if link.get("subLinkType") != "ANY_SUBLINK" or strings(link.get("operName")) not in ([], ["="]):
            return
        outer = self._any_column(scope, link.get("testexpr"))
        body = (link.get("subselect") or {}).get("SelectStmt")
        if outer is None or not outer[1] or outer[0].derived or body is None or outer[2] == self.col:
            return
        if nullable is not None and outer[0].occ not in nullable:
            return
        inner_scope = self.select(scope, body)
        self._walked.add(id(link))
        targets = body.get("targetList", ())
        if body.get("op", "SETOP_NONE") != "SETOP_NONE" or len(targets) != 1:
            return
        inner = self._any_column(inner_scope, targets[0].get("ResTarget", {}).get("val"))
        if inner is not None and inner[1] and not inner[0].derived and inner[2] != self.col:
            self.edges.append(ColumnEdge(inner[0].occ, inner[2], outer[0].occ, outer[2], both=False))

    def _column(self, scope: Scope, node: Any) -> Column | None:
        """Whose tenant column ``node`` is, if it plainly is one."""
        found = self._any_column(scope, node)
        return found[:2] if found is not None and found[2] == self.col else None

    def _any_column(self, scope: Scope, node: Any) -> tuple[Ref, bool, str] | None:
        """(whose, local, column name) of a plain column reference, if it can be told."""
        if not isinstance(node, dict) or "ColumnRef" not in node:
            return None
        fields = node["ColumnRef"].get("fields", ())
        names = strings(fields)
        if len(names) != len(fields) or not names:
            return None
        qual = names[:-1]
        if not qual:
            return (scope.owner, True, names[-1]) if scope.owner is not None else None
        current: Scope | None = scope
        local = True
        while current is not None:
            found, ref = current.find(qual)
            if found:
                return (ref, local, names[-1]) if ref is not None else None
            current, local = current.parent, False
        return None

    def _pin(self, column: Column, ref: ShopRef, nullable: frozenset[int] | None) -> None:
        target, local = column
        if local and ref.known and not target.derived and (nullable is None or target.occ in nullable):
            self.occs[target.occ].direct.append(ref)
            self.refs.append(ref)

    def _link(self, a: Column, b: Column, nullable: frozenset[int] | None) -> None:
        (ra, la), (rb, lb) = a, b
        if not (la or lb):
            return
        if not la or not lb:  # correlation: from the outer occurrence to the inner one
            outer, inner = (ra, rb) if lb else (rb, ra)
            if nullable is None or inner.occ in nullable:
                self._flow(outer, inner, both=False)
            return
        if nullable is None or (ra.occ in nullable and rb.occ in nullable):
            self._flow(ra, rb, both=True)
        elif rb.occ in nullable:
            self._flow(ra, rb, both=False)
        elif ra.occ in nullable:
            self._flow(rb, ra, both=False)

    def _write_ref(self, occ: int, ref: ShopRef) -> None:
        self.occs[occ].direct.append(ref)
        self.refs.append(ref)

    def _assignments(self, scope: Scope, targets: Any, occ: int) -> None:
        """``SET shop_id = v`` in UPDATE / ON CONFLICT: the written row's shop is v too."""
        for target in targets or ():
            rt = target.get("ResTarget", {}) if isinstance(target, dict) else {}
            value = rt.get("val")
            if rt.get("name") == self.col:
                column = self._column(scope, value)
                if column is None or column[0] != Ref(occ) or rt.get("indirection"):
                    self._write_ref(occ, value_ref(value))
            self.expr(scope, value)

    # -- expressions --------------------------------------------------------------------------

    def expr(self, scope: Scope, node: Any) -> None:
        """Walk an expression: subqueries, function calls, casts, system columns."""
        if isinstance(node, list):
            for item in node:
                self.expr(scope, item)
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            ((key, body),) = node.items()
            if key == "SubLink":
                self.expr(scope, body.get("testexpr"))
                if id(body) not in self._walked:  # else walked already by _in_subquery
                    self.query(scope, body.get("subselect"))
                return
            if key in _MISPLACED:
                self.fail(f"{key} inside an expression")
                return
            self._leaf(key, body)
        for value in node.values():
            if isinstance(value, dict | list):
                self.expr(scope, value)

    def _leaf(self, key: str, body: Any) -> None:
        if key == "FuncCall":
            names = strings(body.get("funcname"))
            if not functions.function_is_safe(names):
                self.unsafe.append(".".join(names))
            if names and names[-1] == "set_config":
                self._set_config(body.get("args", ()))
        elif key == "SQLValueFunction":
            op = body.get("op", "")
            if op not in functions.SAFE_VALUE_FUNCTIONS:
                self.unsafe.append(op.removeprefix("SVFOP_").lower())
        elif key == "ColumnRef":
            names = strings(body.get("fields"))
            if names and names[-1] in functions.SYSTEM_COLUMNS:
                self.unsafe.append(names[-1])
        elif key == "TypeCast":
            type_names = strings(body.get("typeName", {}).get("names"))
            if not functions.cast_is_safe(type_names):
                self.unsafe.append("::" + ".".join(type_names))

    def _set_config(self, args: Any) -> None:
        """``set_config('pgtenantproxy.shop_id', v, is_local)``: a SET in disguise."""
        consts = [a.get("A_Const") if isinstance(a, dict) else None for a in args]
        if len(consts) != 3 or consts[0] is None or "sval" not in consts[0]:
            self.set_shop = SetShop("unknown")  # setting name not a literal: could be ours
            return
        if consts[0]["sval"].get("sval", "").lower() != SHOP_SETTING:
            return
        value, local = consts[1], consts[2]
        if value is None or local is None or "boolval" not in local:
            self.set_shop = SetShop("unknown")
            return
        text = value["sval"].get("sval", "") if "sval" in value else str(const_value(value))
        self.set_shop = SetShop("set", int_text(text), bool(local["boolval"].get("boolval")))

    # -- result -------------------------------------------------------------------------------

    def pins(self) -> list[frozenset[ShopRef]]:
        """Direct pins spread along the equality edges until nothing changes."""
        pins = [set(o.direct) for o in self.occs]
        changed = True
        while changed:
            changed = False
            for a, b in self.undirected:
                if pins[a] != pins[b]:
                    merged = pins[a] | pins[b]
                    pins[a], pins[b] = merged, set(merged)
                    changed = True
            for a, b in self.directed:
                if not pins[a] <= pins[b]:
                    pins[b] |= pins[a]
                    changed = True
        return [frozenset(p) for p in pins]

    def result(self, kind: StatementKind, **extra: Any) -> StatementAnalysis:
        understood = self.note is None
        unsafe = tuple(dict.fromkeys(self.unsafe))
        occurrences = tuple(
            Occurrence(o.table, p, o.written) for o, p in zip(self.occs, self.pins(), strict=True)
        )
        values: dict[str, Any] = {
            "kind": kind,
            "understood": understood,
            "read_only": kind == "select"
            and understood
            and not (self.has_write or self.has_locking or unsafe),
            "has_write": self.has_write,
            "has_locking": self.has_locking,
            "unsafe": unsafe,
            "occurrences": occurrences,
            "shop_refs": tuple(self.refs),
            "set_shop": self.set_shop,
            "temp_tables": tuple(self.temp_tables),
            "note": self.note,
            "keys": tuple(self.keys),
            "edges": tuple(self.edges),
            "links": tuple((a, b, True) for a, b in self.undirected)
            + tuple((a, b, False) for a, b in self.directed),
        }
        values.update(extra)
        return StatementAnalysis(**values)
