"""The keys of a shop that changed last: compared on both sides before the cutover's flip.

Under the cutover's fence no transaction writes the shop; the outbox entries
still pending at that moment name every key whose latest change may not
have reached the tenant database yet. :func:`dirty_keys` reads them (before the
drain), :func:`differing_keys` compares exactly those keys on both sides
after the drain (row hashes, :mod:`.checksums`). Everything older was
covered by the mirror's steady state and the operator's verification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.migration.checksums import comparable, key_hashes

_PENDING = "SELECT DISTINCT tbl, pk::text AS pk FROM pgtenantproxy.outbox WHERE shop_id = $1"


async def dirty_keys(conn: asyncpg.Connection, shop_id: int) -> dict[str, list[str]]:
    """``{table label: [key (jsonb array text)]}`` of the shop's pending outbox entries."""
    keys: dict[str, list[str]] = {}
    for r in await conn.fetch(_PENDING, shop_id):
        keys.setdefault(str(r["tbl"]), []).append(str(r["pk"]))
    return keys


async def differing_keys(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, tables: Sequence[TableInfo],
    keys: Mapping[str, list[str]], shop_id: int,
) -> dict[str, list[str]]:
    """``{table label: [key]}`` of the given keys whose rows differ (or exist on one side only)."""
    found: dict[str, list[str]] = {}
    for table in tables:
        wanted = keys.get(table.label)
        if not wanted:
            continue
        a = await _hashes(unified, table, wanted, shop_id)
        b = await _hashes(tenant, table, wanted, None)
        differ = sorted(k for k in wanted if a.get(k) != b.get(k))
        if differ:
            found[table.label] = differ
    return found


async def _hashes(
    conn: asyncpg.Connection, table: TableInfo, keys: list[str], shop_id: int | None
) -> dict[str, int | None]:
    async with comparable(conn):
        return await key_hashes(conn, table, keys, shop_id)
