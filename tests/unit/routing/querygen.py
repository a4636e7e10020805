"""Random SQL whose truth is known: for every tenant-table occurrence, the shops its rows may belong to.

The generator builds a query from parts and derives, from what it emitted, which
conditions restrict which occurrence (its own small model, kept apart from the
analyser's code):

* ``a.shop_id = v`` (in any of several spellings) AND-ed at the top of a WHERE,
  or in the ON of an inner join, restricts ``a`` to v; in the ON of a LEFT
  join only the joined (nullable) table is restricted;
* ``a.shop_id = b.shop_id`` makes a and b share restrictions, one way only
  (a to b) in the ON of a LEFT JOIN of b;
* a condition of an EXISTS subquery restricts the subquery's table; a
  correlated ``s.shop_id = outer.shop_id`` passes the outer restriction in;
* conditions under OR / NOT restrict nothing.

``truth`` maps each occurrence to the set of shops allowed, or None when
unrestricted (any shop's rows may matter). Writes, locking and the like are
marked so a test can insist they stay on unified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

TENANT_TABLES = ("orders", "customers", "repairs")
GLOBAL_TABLES = ("devices",)
SHOPS = (1, 2, 3)


class Draw(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...
    def integer(self, low: int, high: int) -> int: ...


@dataclass
class Occ:
    table: str
    alias: str
    direct: set[int] = field(default_factory=set)

    @property
    def tenant(self) -> bool:
        return self.table in TENANT_TABLES


@dataclass
class Generated:
    sql: str
    params: list[bytes]
    occs: list[Occ]
    undirected: list[tuple[int, int]]
    directed: list[tuple[int, int]]
    #: Must never reach a tenant: writes, locking, SELECT INTO...
    never_tenant: bool = False

    def truth(self) -> list[set[int] | None]:
        """Per occurrence: the shops its rows may come from (None: any shop)."""
        pins = [set(o.direct) for o in self.occs]
        for _ in range(len(pins) + 1):
            for a, b in self.undirected:
                pins[a] = pins[b] = pins[a] | pins[b]
            for a, b in self.directed:
                pins[b] |= pins[a]
        return [p or None for p in pins]


class _Builder:
    def __init__(self, draw: Draw, focus: int) -> None:
        self.draw = draw
        self.focus = focus  # the shop most conditions name: keeps tenant-routable queries common
        self.params: list[bytes] = []
        self.occs: list[Occ] = []
        self.undirected: list[tuple[int, int]] = []
        self.directed: list[tuple[int, int]] = []

    def shop(self) -> int:
        return self.focus if self.draw.integer(0, 3) else self.draw.choice(SHOPS)

    def table(self) -> str:
        return self.draw.choice(TENANT_TABLES * 4 + GLOBAL_TABLES)

    def occ(self, table: str) -> int:
        self.occs.append(Occ(table, f"t{len(self.occs)}"))
        return len(self.occs) - 1

    def pin_text(self, alias: str, value: int) -> str:
        form = self.draw.integer(0, 7)
        if form == 0:
            return f"{value} = {alias}.shop_id"
        if form == 1:
            return f"{alias}.shop_id IN ({value})"
        if form == 2:
            return f"{alias}.shop_id = '{value}'::int"
        if form == 3:
            self.params.append(str(value).encode())
            return f"{alias}.shop_id = ${len(self.params)}"
        if form == 4:
            return f"{alias}.shop_id = ANY('{{{value}}}')"
        return f"{alias}.shop_id = {value}"

    def condition(self, scope: list[int], nullable: int | None) -> str:
        """One condition over occurrences in ``scope``; records what it restricts."""
        kind = self.draw.integer(0, 9)
        a = self.draw.choice(scope)
        alias = self.occs[a].alias
        if kind <= 4:
            value = self.shop()
            if nullable is None or a == nullable:
                self.occs[a].direct.add(value)
            return self.pin_text(alias, value)
        if kind <= 6 and len(scope) > 1:
            b = self.draw.choice([o for o in scope if o != a])
            if nullable is None:
                self.undirected.append((a, b))
            elif b == nullable:
                self.directed.append((a, b))
            elif a == nullable:
                self.directed.append((b, a))
            return f"{alias}.shop_id = {self.occs[b].alias}.shop_id"
        if kind == 7:
            return f"({alias}.shop_id = {self.shop()} OR {alias}.id > 5)"
        if kind == 8:
            return f"NOT ({alias}.shop_id = {self.shop()})"
        return f"{alias}.id > {self.draw.integer(0, 9)}"

    def exists(self, outer: list[int]) -> str:
        s = self.occ(self.table())
        alias = self.occs[s].alias
        conds = [f"{alias}.id = {self.occs[self.draw.choice(outer)].alias}.id"]
        for _ in range(self.draw.integer(0, 2)):
            if self.draw.integer(0, 1):
                o = self.draw.choice(outer)
                self.directed.append((o, s))
                conds.append(f"{alias}.shop_id = {self.occs[o].alias}.shop_id")
            else:
                conds.append(self.condition([s], None))
        body = f"SELECT 1 FROM {self.occs[s].table} {alias} WHERE {' AND '.join(conds)}"
        return f"{'NOT ' if self.draw.integer(0, 3) == 0 else ''}EXISTS ({body})"

    def select(self) -> str:
        first = self.occ(self.table())
        scope = [first]
        sql = f"SELECT * FROM {self.occs[first].table} {self.occs[first].alias}"
        for _ in range(self.draw.integer(0, 2)):
            nxt = self.occ(self.table())
            table, alias = self.occs[nxt].table, self.occs[nxt].alias
            join = self.draw.choice((",", "JOIN", "LEFT JOIN"))
            scope.append(nxt)
            if join == ",":
                sql += f", {table} {alias}"
                continue
            nullable = nxt if join == "LEFT JOIN" else None
            conds = [self.condition(scope, nullable) for _ in range(self.draw.integer(1, 2))]
            sql += f" {join} {table} {alias} ON {' AND '.join(conds)}"
        return sql + self.where(scope)

    def where(self, scope: list[int]) -> str:
        conds = [self.condition(scope, None) for _ in range(self.draw.integer(0, 4))]
        if self.draw.integer(0, 3) == 0:
            sub = self.exists(scope)
            conds.append(sub if self.draw.integer(0, 2) else f"({sub} OR {self.occs[scope[0]].alias}.id = 1)")
        return f" WHERE {' AND '.join(conds)}" if conds else ""

    def done(self, sql: str, never_tenant: bool = False) -> Generated:
        return Generated(sql, self.params, self.occs, self.undirected, self.directed, never_tenant)


def _derived(b: _Builder) -> str:
    """``(SELECT * FROM x WHERE ...) d [LEFT] JOIN y ON y.shop_id = d.shop_id ...``: x's pins flow to y."""
    inner = b.occ(b.table())
    conds = [b.condition([inner], None) for _ in range(b.draw.integer(0, 2))]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    sub = f"(SELECT * FROM {b.occs[inner].table} {b.occs[inner].alias}{where}) d"
    outer = b.occ(b.table())
    join = b.draw.choice(("JOIN", "LEFT JOIN"))
    b.directed.append((inner, outer))  # y's rows must match d.shop_id, a shop of x's rows
    sql = f"SELECT * FROM {sub} {join} {b.occs[outer].table} {b.occs[outer].alias} "
    sql += f"ON {b.occs[outer].alias}.shop_id = d.shop_id AND {b.occs[outer].alias}.id = d.id"
    return sql + b.where([outer])


def generate(draw: Draw) -> Generated:
    """One statement: mostly reads in various shapes, sometimes writes and locking reads."""
    b = _Builder(draw, draw.choice(SHOPS))
    shape = draw.integer(0, 12)
    if shape <= 4:
        return b.done(b.select())
    if shape == 5 or shape == 12:
        return b.done(_derived(b))
    if shape == 6:
        return b.done(f"WITH c AS ({b.select()}) SELECT * FROM c")
    if shape == 7:
        left = b.select().replace("SELECT *", "SELECT t0.id", 1)
        start = len(b.occs)
        right = b.select().replace("SELECT *", f"SELECT {b.occs[start].alias}.id", 1)
        return b.done(f"{left} UNION ALL {right}")
    if shape == 8:
        return b.done(b.select() + draw.choice((" FOR UPDATE", " FOR SHARE", " FOR NO KEY UPDATE")), True)
    if shape == 9:
        return b.done(b.select().replace("SELECT *", "SELECT * INTO scratch", 1), True)
    target = b.occ(draw.choice(TENANT_TABLES))
    alias = b.occs[target].alias
    if shape == 10:
        table = b.occs[target].table
        verb = draw.choice((f"UPDATE {table} {alias} SET id = 1", f"DELETE FROM {table} {alias}"))
        return b.done(verb + b.where([target]), True)
    value = b.shop()
    b.occs[target].direct.add(value)
    return b.done(f"INSERT INTO {b.occs[target].table} (id, shop_id) VALUES (1, {value})", True)
