"""Where the tenant column is in a COPY without a column list, read with the routing catalog.

``COPY customers FROM STDIN`` (psql's ``\\copy customers from stdin``, asyncpg's
``copy_records_to_table`` without ``columns=``) sends every column of the table
but the generated ones, in the table's order. To read each row's shop the proxy
needs the tenant column's position among those, and their number (the
CopyInResponse it sends itself). Read from the unified database's catalog for the
tenant tables, rebuilt whole on each catalog refresh (a column added or dropped is
seen within ``catalog_refresh_ms``). A shop's database has the same columns in the
same order (its schema is cloned from unified's, column by column); a table not
found here (or a server without ``attgenerated``) keeps COPY without a column
list on unified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.routing.tables import DEFAULT_SCHEMA

logger = logging.getLogger(__name__)

_COLUMNS = """
SELECT n.nspname || '.' || c.relname AS tbl, array_agg(a.attname::text ORDER BY a.attnum) AS cols
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE n.nspname || '.' || c.relname = ANY($1::text[])
GROUP BY 1
"""


@dataclass(frozen=True)
class CopyColumns:
    #: table label (``schema.name``) -> (the tenant column's position, the number of columns)
    layouts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def layout(self, table: str) -> tuple[int, int] | None:
        """The layout of ``table`` as written (an unqualified name is in ``public``)."""
        found = self.layouts.get(table)
        if found is None and "." not in table:
            found = self.layouts.get(f"{DEFAULT_SCHEMA}.{table}")
        return found


async def read_copy_columns(
    conn: asyncpg.Connection, tenant_tables: frozenset[str], tenant_column: str
) -> CopyColumns:
    try:
        rows = await conn.fetch(_COLUMNS, sorted(tenant_tables))
    except asyncpg.PostgresError as exc:
        logger.debug("COPY column layouts unavailable: %s", exc)
        return CopyColumns()
    layouts = {}
    for row in rows:
        columns = list(row["cols"])
        if tenant_column in columns:
            layouts[str(row["tbl"])] = (columns.index(tenant_column), len(columns))
    return CopyColumns(layouts)
