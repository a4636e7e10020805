"""The audit log: one row per lifecycle action, in ``pgtenantproxy.migration_log``.

The table belongs to the control schema (:mod:`pgtenantproxy.tenancy.control_schema`
creates it); every package that acts on a shop (provisioning, the phase store,
backfill, cutover, retirement, the admin API) appends through :func:`audit`.
"""

from __future__ import annotations

import asyncpg


async def audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    shop_id: int | None,
    action: str,
    status: str,
    step: str | None = None,
    detail: str | None = None,
    actor: str | None = None,
) -> None:
    """Append one row to ``pgtenantproxy.migration_log`` (the audit log).

    ``actor`` names who asked (the admin API passes its caller); by default the
    database role of the connection.
    """
    await conn.execute(
        "INSERT INTO pgtenantproxy.migration_log (shop_id, action, step, status, detail, actor)"
        " VALUES ($1, $2, $3, $4, $5, coalesce($6, current_user))",
        shop_id,
        action,
        step,
        status,
        detail,
        actor,
    )
