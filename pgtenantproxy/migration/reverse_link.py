"""Retirement's view of reverse mirroring, read and changed in the shop's tenant database itself.

A shop in ``tenant_primary`` has reverse capture on its tenant database: its
writes queue in that database's ``pgtenantproxy.outbox`` until the reverse
worker applied them to unified. Retirement and restore work from any process
(the CLI, the admin API), not only the one running the reverse worker, so they
look at the queue where it lives:

* :func:`wait_reverse_drained`: the tenant outbox holds no entry of the shop
  and no dead letter (polled up to a timeout). A database without the
  mirroring tables has never captured anything: drained.
* :func:`remove_reverse_capture` / :func:`install_reverse_capture`: capture
  triggers (and the write fence) off / on in the tenant database
  (:mod:`pgtenantproxy.dualwrite.reverse`, the same installer as on unified;
  the entries already queued stay for the worker).

All of it runs as the tenant server's admin (``[[tenant_servers]]``), which owns
the control schema there; the shop's own role has no right on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from pgtenantproxy.dualwrite import reverse
from pgtenantproxy.dualwrite.capture import CapturedTable, installed_tables
from pgtenantproxy.dualwrite.reverse import ReversePending, reverse_pending, wait_reverse_drained
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.service import TenancyService

__all__ = ["ReversePending", "install_reverse_capture", "remove_reverse_capture", "reverse_capture_installed",
           "reverse_pending", "tenant_admin", "wait_reverse_drained"]


async def tenant_admin(tenancy: TenancyService, shop_id: int) -> asyncpg.Connection:
    """The tenant server's admin, connected to the shop's database."""
    return await reverse.connect_tenant_admin(tenancy.registry, tenancy.servers, shop_id)


async def reverse_capture_installed(conn: asyncpg.Connection) -> bool:
    return bool(await installed_tables(conn))


async def remove_reverse_capture(conn: asyncpg.Connection) -> list[QualifiedName]:
    """Capture triggers off in the tenant database (nothing to do when it never had them)."""
    if not await reverse_capture_installed(conn):
        return []
    return await reverse.remove_reverse_capture(conn)


async def install_reverse_capture(conn: asyncpg.Connection, tables: Sequence[TableInfo]) -> int:
    """Capture on in the tenant database, on the tables captured on unified (idempotent); how many."""
    captured = [CapturedTable(t.name, t.tenant_column, tuple(c.name for c in t.pk)) for t in tables]
    return len(await reverse.install_reverse_capture(conn, captured)) if captured else 0
