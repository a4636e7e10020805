"""Running the shapes with psycopg 3 and asyncpg, and comparing two runs.

An :class:`Answer` keeps, per statement, either the rows (each value as its
``repr``: numerics compared exactly as the driver returns them, scale
included) or the row count of a write; or the error that stopped the shape
(SQLSTATE and message). :func:`problem` says what is wrong with an answer
after the migration, compared with the one before; :func:`report` puts all
the problems of a run into readable text.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
from psycopg import IsolationLevel

from tests.integration.federation.shapes import REFUSED, Shape, Stmt

Row = tuple[str, ...]
DRIVERS = ("psycopg", "asyncpg")


@dataclass(frozen=True)
class Error:
    sqlstate: str | None
    message: str
    #: Index of the statement that failed (the number of statements: the COMMIT).
    at: int = 0

    def __str__(self) -> str:
        return f"SQLSTATE {self.sqlstate}: {self.message}"


@dataclass
class Answer:
    #: Per statement run: ("rows", [row, ...]) or ("count", n).
    results: list[tuple[str, Any]] = field(default_factory=list)
    error: Error | None = None
    #: The shape's ``verify`` statements, run after it.
    verify: list[Answer] = field(default_factory=list)

    def brief(self) -> str:
        parts = [f"{len(v)} rows" if kind == "rows" else f"count {v}" for kind, v in self.results]
        if self.error is not None:
            parts.append(f"error {self.error}")
        return "; ".join(parts) or "nothing"


Answers = dict[str, Answer]


def _error(exc: BaseException, at: int) -> Error:
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).strip()
    return Error(sqlstate, text.splitlines()[0] if text else type(exc).__name__, at)


# --- psycopg 3 ---------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\d+)")
_ISOLATION = {"read committed": IsolationLevel.READ_COMMITTED,
              "repeatable read": IsolationLevel.REPEATABLE_READ,
              "serializable": IsolationLevel.SERIALIZABLE}


def psycopg_query(stmt: Stmt) -> tuple[str, tuple[Any, ...] | None]:
    """``$n`` placeholders as psycopg's ``%s`` (the parameters reordered by occurrence, ``%`` escaped)."""
    if not stmt.params:
        return stmt.sql, None
    order = [int(n) for n in _PLACEHOLDER.findall(stmt.sql)]
    sql = _PLACEHOLDER.sub("%s", stmt.sql.replace("%", "%%"))
    return sql, tuple(stmt.params[n - 1] for n in order)


def _psycopg_stmt(conn: psycopg.Connection[Any], stmt: Stmt) -> tuple[str, Any]:
    sql, params = psycopg_query(stmt)
    cur = conn.execute(sql, params)
    if stmt.write:
        return "count", cur.rowcount
    return "rows", [tuple(repr(v) for v in row) for row in cur.fetchall()]


def _psycopg_shape(conn: psycopg.Connection[Any], shape: Shape) -> Answer:
    answer = Answer()
    try:
        if shape.isolation is None:
            for stmt in shape.stmts:
                answer.results.append(_psycopg_stmt(conn, stmt))
        else:
            conn.isolation_level = _ISOLATION[shape.isolation]
            try:
                with conn.transaction():  # BEGIN ISOLATION LEVEL ... (autocommit connection)
                    for stmt in shape.stmts:
                        answer.results.append(_psycopg_stmt(conn, stmt))
            finally:
                conn.isolation_level = None
    except psycopg.Error as exc:
        answer.error = _error(exc, len(answer.results))
    return answer


def run_psycopg(conninfo: str, shapes: Iterable[Shape]) -> Answers:
    answers: Answers = {}
    conn: psycopg.Connection[Any] | None = None
    try:
        for shape in shapes:
            if conn is None or conn.closed or conn.broken:
                conn = psycopg.connect(conninfo, autocommit=True)
            answer = _psycopg_shape(conn, shape)
            for stmt in shape.verify:
                answer.verify.append(_psycopg_shape(conn, Shape("verify", (stmt,))))
            answers[shape.name] = answer
    finally:
        if conn is not None:
            conn.close()
    return answers


# --- asyncpg ------------------------------------------------------------------------------------------------

_ASYNCPG_ISOLATION = {"read committed": "read_committed", "repeatable read": "repeatable_read",
                      "serializable": "serializable"}
_ASYNCPG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)


async def _asyncpg_stmt(conn: asyncpg.Connection, stmt: Stmt) -> tuple[str, Any]:
    if stmt.write:
        status = await conn.execute(stmt.sql, *stmt.params)
        return "count", int(status.rsplit(" ", 1)[-1])
    records = await conn.fetch(stmt.sql, *stmt.params)
    return "rows", [tuple(repr(v) for v in record) for record in records]


async def _asyncpg_shape(conn: asyncpg.Connection, shape: Shape) -> Answer:
    answer = Answer()
    try:
        if shape.isolation is None:
            for stmt in shape.stmts:
                answer.results.append(await _asyncpg_stmt(conn, stmt))
        else:
            async with conn.transaction(isolation=_ASYNCPG_ISOLATION[shape.isolation]):
                for stmt in shape.stmts:
                    answer.results.append(await _asyncpg_stmt(conn, stmt))
    except _ASYNCPG_ERRORS as exc:
        answer.error = _error(exc, len(answer.results))
    return answer


async def _run_asyncpg(kwargs: Mapping[str, Any], shapes: Iterable[Shape]) -> Answers:
    answers: Answers = {}
    conn: asyncpg.Connection | None = None
    try:
        for shape in shapes:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(**kwargs)
            answer = await _asyncpg_shape(conn, shape)
            for stmt in shape.verify:
                answer.verify.append(await _asyncpg_shape(conn, Shape("verify", (stmt,))))
            answers[shape.name] = answer
    finally:
        if conn is not None:
            await conn.close()
    return answers


def run_asyncpg(kwargs: Mapping[str, Any], shapes: Iterable[Shape]) -> Answers:
    return asyncio.run(_run_asyncpg(kwargs, shapes))


# --- comparison ---------------------------------------------------------------------------------------------

SHOWN = 8


def _row(row: Row) -> str:
    return "(" + ", ".join(row) + ")"


def _rows_problem(stmt: Stmt, before: list[Row], after: list[Row]) -> str | None:
    if stmt.ordered and before == after:
        return None
    if not stmt.ordered and sorted(before) == sorted(after):
        return None
    missing = Counter(before) - Counter(after)
    extra = Counter(after) - Counter(before)
    lines = [f"before {len(before)} rows, after {len(after)} rows"
             + (" (FEWER ROWS)" if len(after) < len(before) else "")]
    for what, rows in (("missing", missing), ("extra", extra)):
        if rows:
            listed = list(rows.elements())
            lines.append(f"{what} {len(listed)}: " + "; ".join(_row(r) for r in listed[:SHOWN])
                         + (" ..." if len(listed) > SHOWN else ""))
    if not missing and not extra:  # same multiset, another order
        i = next(i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a)
        lines.append(f"same rows in another order: first difference at row {i}: before {_row(before[i])}, "
                     f"after {_row(after[i])}")
    return "\n".join(lines)


def _compare(stmts: tuple[Stmt, ...], before: Answer, after: Answer) -> list[str]:
    if before.error is not None:
        return [f"no answer before to compare with ({before.error})"]
    if after.error is not None:
        at = after.error.at
        where = "" if len(stmts) == 1 and at == 0 else \
            f" at statement {at + 1}" if at < len(stmts) else " at COMMIT"
        return [f"before: {before.brief()}; after: error{where}: {after.error}"]
    problems = []
    pairs = zip(stmts, before.results, after.results, strict=True)
    for i, (stmt, (bkind, b), (akind, a)) in enumerate(pairs):
        prefix = f"statement {i + 1}: " if len(stmts) > 1 else ""
        if bkind != akind:
            problems.append(f"{prefix}before {bkind} {b!r}, after {akind} {a!r}")
        elif bkind == "count":
            if a != b:
                problems.append(f"{prefix}rows affected: before {b}, after {a}")
        elif (text := _rows_problem(stmt, b, a)) is not None:
            problems.append(prefix + text)
    return problems


def problem(shape: Shape, before: Answer, after: Answer) -> str | None:
    """What is wrong with ``after`` (None: nothing)."""
    if shape.allowed_refusal is not None:
        lines = []
        if after.error is None or after.error.sqlstate != REFUSED:
            got = f"error {after.error}" if after.error is not None else f"an answer ({after.brief()})"
            lines.append(f"allowed refusal ({shape.allowed_refusal}) expected SQLSTATE {REFUSED}, got {got}")
    else:
        lines = _compare(shape.stmts, before, after)
    for stmt, b, a in zip(shape.verify, before.verify, after.verify, strict=True):
        lines += [f"CHANGED after the shape: `{stmt.sql}` {stmt.params}: {p}"
                  for p in _compare((stmt,), b, a)]
    return "\n".join(lines) if lines else None


def describe(shape: Shape) -> str:
    lines = []
    if shape.isolation is not None:
        lines.append(f"BEGIN ISOLATION LEVEL {shape.isolation.upper()};")
    for stmt in shape.stmts:
        lines.append(stmt.sql + (f"   -- params {list(stmt.params)}" if stmt.params else "")
                     + ("" if stmt.ordered or stmt.write else "   -- compared as a multiset"))
    if shape.isolation is not None:
        lines.append("COMMIT;")
    return "\n".join(lines)


def indent(text: str, by: str = "    ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def report(driver: str, shapes: Iterable[Shape], before: Answers, after: Answers) -> tuple[str, list[str]]:
    """(the readable report, the names of the failing shapes)."""
    shapes = list(shapes)
    failing: list[str] = []
    sections: list[str] = []
    refusals: Counter[str | None] = Counter()
    for shape in shapes:
        text = problem(shape, before[shape.name], after[shape.name])
        err = after[shape.name].error
        if err is not None:
            refusals[err.sqlstate] += 1
        if text is None:
            continue
        failing.append(shape.name)
        tag = f"  [allowed refusal: {shape.allowed_refusal}]" if shape.allowed_refusal else ""
        sections.append(f"--- {shape.name} ({driver}){tag}\n{indent(describe(shape))}\n  =>\n{indent(text)}")
    head = (f"{driver}: {len(shapes) - len(failing)} of {len(shapes)} shapes as before; "
            f"{len(failing)} failing; errors after the migration by SQLSTATE: {dict(refusals) or 'none'}")
    head += "".join(f"\n  refused as allowed ({s.allowed_refusal}): {s.name}: {after[s.name].error}"
                    for s in shapes if s.allowed_refusal and s.name not in failing)
    if failing:
        head += "\nfailing: " + ", ".join(failing)
    return "\n\n".join([head, *sections]), failing
