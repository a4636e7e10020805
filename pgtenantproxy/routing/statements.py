"""One top-level parsed statement -> :class:`StatementAnalysis` (kind, SET, transaction control).

Queries (SELECT/VALUES, INSERT, UPDATE, DELETE, MERGE) go through the
scope-aware :class:`~pgtenantproxy.routing.walker.StatementWalker`. Everything
else is classified by its node type: transaction control, SET/RESET/SHOW,
DDL (counted as a write), and "other". Statements that may write whatever
their text says (CALL, DO, EXECUTE of an SQL-level prepared statement,
COPY FROM) count as writes; their shops are unknown.
"""

from __future__ import annotations

from typing import Any

from pgtenantproxy.routing.copy_statement import copy_target
from pgtenantproxy.routing.model import SHOP_SETTING, SetShop, StatementAnalysis, StatementKind, TxControl
from pgtenantproxy.routing.values import const_value, int_text
from pgtenantproxy.routing.walker import Node, StatementWalker

_QUERY_KINDS: dict[str, StatementKind] = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "other",
}
_DDL_PREFIXES = (
    "Create", "Alter", "Drop", "Rename", "Grant", "Comment", "Define", "Truncate", "Rule", "Index",
    "View", "SecLabel", "Reassign", "ImportForeignSchema", "Refresh", "CompositeType", "Reindex", "Cluster",
)  # fmt: skip
_MAY_WRITE = frozenset({"CallStmt", "DoStmt", "ExecuteStmt"})
_TX_OPS: dict[str, Any] = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to",
    "TRANS_STMT_PREPARE": "prepare",
}


def analyse_statement(stmt: Node, tenant_column: str) -> StatementAnalysis:
    ((key, body),) = stmt.items()
    walker = StatementWalker(tenant_column)
    if key in _QUERY_KINDS:
        walker.query(None, stmt)
        return walker.result(_QUERY_KINDS[key])
    if key == "TransactionStmt":
        op = _TX_OPS.get(body.get("kind", ""), "other")
        tx = TxControl(op, body.get("savepoint_name"), bool(body.get("chain")))
        return StatementAnalysis(kind="transaction", tx=tx)
    if key == "VariableSetStmt":
        setting = "all" if body.get("kind") == "VAR_RESET_ALL" else str(body.get("name", "")).lower()
        return StatementAnalysis(kind="set", set_shop=_variable_set(body), setting=setting)
    if key == "VariableShowStmt":
        return StatementAnalysis(kind="show")
    if key == "DiscardStmt":
        reset = SetShop("reset") if body.get("target") == "DISCARD_ALL" else None
        return StatementAnalysis(kind="other", set_shop=reset)
    return _other(key, body, walker)


def _other(key: str, body: Node, walker: StatementWalker) -> StatementAnalysis:
    """Statements that never go to a tenant: tables listed for metrics, writes flagged."""
    inner = body.get("query")
    if key in ("ExplainStmt", "PrepareStmt", "DeclareCursorStmt", "CopyStmt", "CreateTableAsStmt") and inner:
        walker.query(None, inner)
    if key == "ExplainStmt":
        analyze = any(o.get("DefElem", {}).get("defname") == "analyze" for o in body.get("options", ()))
        return walker.result("other", has_write=walker.has_write and analyze)
    if key in ("PrepareStmt", "DeclareCursorStmt"):
        return walker.result("other", has_write=False)
    temp = list(walker.temp_tables)
    for rv in _relations(body, skip=("query",)):
        walker.occurrence(rv, written=True)
        if rv.get("relpersistence") == "t" and key in ("CreateStmt", "CreateTableAsStmt", "ViewStmt"):
            temp.append(rv.get("relname", ""))
    if key.startswith(_DDL_PREFIXES):
        return walker.result("ddl", has_write=True, temp_tables=tuple(temp))
    if key == "LockStmt":
        return walker.result("other", has_locking=True)
    writes = key in _MAY_WRITE or (key == "CopyStmt" and bool(body.get("is_from")))
    copy = copy_target(body, walker.col) if key == "CopyStmt" else None
    return walker.result("other", has_write=writes, copy=copy)


def _relations(node: Any, skip: tuple[str, ...] = ()) -> list[Node]:
    """Every RangeVar (wrapped or inline: any dict with ``relname``) under ``node``."""
    found: list[Node] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(reversed(current))
        elif isinstance(current, dict):
            if isinstance(current.get("relname"), str):
                found.append(current)
                continue
            stack.extend(v for k, v in reversed(current.items()) if k not in skip)
    return found


def _variable_set(body: Node) -> SetShop | None:
    """SET/RESET of ``pgtenantproxy.shop_id`` (GUC names are case-insensitive)."""
    kind = body.get("kind", "")
    if kind == "VAR_RESET_ALL":
        return SetShop("reset")
    if str(body.get("name", "")).lower() != SHOP_SETTING:
        return None
    local = bool(body.get("is_local"))
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return SetShop("reset", local=local)
    args = body.get("args", ())
    if kind != "VAR_SET_VALUE" or len(args) != 1 or "A_Const" not in args[0]:
        return SetShop("set", None, local)  # SET ... FROM CURRENT, lists: not a shop id
    const = args[0]["A_Const"]
    text = const["sval"].get("sval", "") if "sval" in const else str(const_value(const))
    return SetShop("set", int_text(text), local)
