"""Reference tables: the facts routing reads about each shop's read-only copies of global tables.

Every shop database (phases in :data:`HAS_DATABASE`) holds, under the same
qualified name, a copy of each ``[[tenancy.reference_tables]]`` table with
only its listed columns (a filtered one: only the shop's rows), kept by
:mod:`pgtenantproxy.migration.reference`. Two control-schema tables (step 7):

* ``pgtenantproxy.reference_changes``: one row per changed key of a reference
  table on unified (``key`` the primary key as a jsonb array, NULL after a
  TRUNCATE: everything), appended by the capture trigger in the writer's
  transaction;
* ``pgtenantproxy.reference_state``: per shop and table, the last change id
  applied to the shop's copy (``applied_id``), when, the copy's row count and
  the definition it was built from (``signature``).

INVARIANT (kept by the sync): every change with ``id <= applied_id`` is in
the shop's copy. A change is pending for a shop while its id is above the
shop's ``applied_id`` for that table; :func:`reference_lag` is the age of the
oldest pending one. A shop without a state row for some table has no usable
copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from pgtenantproxy.lifecycle import phases as ph

#: Phases whose shop has its own database (the copies are kept from ``provisioned`` on).
HAS_DATABASE = frozenset(p for p in ph.PHASES if p not in (ph.UNIFIED, *ph.INTERRUPTED))
CHANGES = "pgtenantproxy.reference_changes"
STATE = "pgtenantproxy.reference_state"
CAPTURE_FUNCTION = "pgtenantproxy.capture_reference"
#: The capture triggers on each reference table (unified): rows inserted or deleted, rows updated (only when a
#: listed column changed), TRUNCATE.
TRIGGER_ROW = "pgtenantproxy_reference_row"
TRIGGER_UPDATE = "pgtenantproxy_reference_upd"
TRIGGER_TRUNCATE = "pgtenantproxy_reference_truncate"
TRIGGERS = (TRIGGER_ROW, TRIGGER_UPDATE, TRIGGER_TRUNCATE)
#: Advisory lock namespace, taken on a shop's own database (second int 0): one sync of its copies at a time.
REFERENCE_LOCK = 0x5047545C
#: Advisory lock namespace on unified (second int 0): held shared by every sync round, exclusive to prune
#: the change log.
PRUNE_LOCK = 0x5047545E

#: Per shop having a state row for every one of ``$1`` (distinct labels): the age of its oldest pending
#: change (one index probe per shop and table: ``reference_changes (tbl, id)``).
_LAG = """
SELECT s.shop_id, max(coalesce(extract(epoch FROM clock_timestamp() - c.changed_at), 0))::float8 AS lag
FROM pgtenantproxy.reference_state s
LEFT JOIN LATERAL (SELECT changed_at FROM pgtenantproxy.reference_changes c
                   WHERE c.tbl = s.tbl AND c.id > s.applied_id ORDER BY c.id LIMIT 1) c ON true
WHERE s.tbl = ANY($1::text[])
GROUP BY s.shop_id
HAVING count(*) = cardinality($1::text[])
"""
_STATE = """
SELECT s.shop_id, s.tbl, s.applied_id, s.applied_at, s.rows, s.signature,
       coalesce(extract(epoch FROM clock_timestamp() - c.changed_at), 0)::float8 AS lag,
       (SELECT count(*) FROM pgtenantproxy.reference_changes p WHERE p.tbl = s.tbl AND p.id > s.applied_id)
           AS pending
FROM pgtenantproxy.reference_state s
LEFT JOIN LATERAL (SELECT changed_at FROM pgtenantproxy.reference_changes c
                   WHERE c.tbl = s.tbl AND c.id > s.applied_id ORDER BY c.id LIMIT 1) c ON true
ORDER BY s.shop_id, s.tbl
"""


@dataclass(frozen=True)
class CopyState:
    """One shop's copy of one reference table, as ``reference_state`` records it."""

    shop_id: int
    table: str
    applied_id: int
    applied_at: datetime
    rows: int
    signature: str
    lag_s: float = 0.0
    pending: int = 0


async def reference_lag(conn: asyncpg.Connection | asyncpg.Pool, tables: Sequence[str]) -> dict[int, float]:
    """shop -> age in seconds of the oldest change of ``tables`` (labels) not yet in its copies (0.0: all
    applied). Shops missing a state row for one of ``tables`` are absent: their copies are not usable.
    One indexed query; empty when ``tables`` is."""
    labels = sorted(set(tables))
    if not labels:
        return {}
    return {int(r["shop_id"]): float(r["lag"]) for r in await conn.fetch(_LAG, labels)}


async def read_copy_states(conn: asyncpg.Connection | asyncpg.Pool) -> list[CopyState]:
    """Every recorded copy, by shop and table, with its lag and pending changes."""
    return [CopyState(int(r["shop_id"]), r["tbl"], int(r["applied_id"]), r["applied_at"], int(r["rows"]),
                      r["signature"], float(r["lag"]), int(r["pending"]))
            for r in await conn.fetch(_STATE)]
