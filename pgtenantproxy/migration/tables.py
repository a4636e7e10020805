"""The captured tables as the lifecycle steps need them: ``TableInfo`` in foreign key order.

One place for verification, retirement, restore, cutover and rollback:
:func:`ordered_tables` gives every table capture has recorded (still
installed or not), referenced tables first, and refuses, naming the step, when
capture was never set up; :func:`active_tables` keeps the ones capture is on.
"""

from __future__ import annotations

import asyncpg

from pgtenantproxy.dualwrite.capture import installed_tables
from pgtenantproxy.dualwrite.catalog import read_tables
from pgtenantproxy.dualwrite.sqlgen import TableInfo, dependency_order
from pgtenantproxy.lifecycle.errors import MigrationError


async def ordered_tables(conn: asyncpg.Connection, *, purpose: str) -> list[TableInfo]:
    """The recorded captured tables, referenced first; MigrationError when there are none."""
    try:
        tables = await read_tables(conn)
    except asyncpg.UndefinedTableError:
        tables = {}
    if not tables:
        raise MigrationError("write capture was never set up (pgtenantproxy dual-write enable): "
                             f"no captured table to {purpose}")
    return [tables[label] for label in dependency_order(tables)]


async def active_tables(conn: asyncpg.Connection, *, purpose: str) -> list[TableInfo]:
    """:func:`ordered_tables` that capture is installed on right now."""
    active = {str(t.name) for t in await installed_tables(conn)}
    return [t for t in await ordered_tables(conn, purpose=purpose) if t.label in active]
