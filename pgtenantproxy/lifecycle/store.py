"""Shop phases in the control schema: the one place that moves a shop through the lifecycle.

``pgtenantproxy.shop_phases`` holds one row per shop that ever left
``unified``. :func:`transition` is the only writer (besides the operator's
:func:`force_phase`): it reads the shop's record, checks the move against
:mod:`.phases`, and applies it as one *fenced* update (``WHERE version = the
version read``), together with its audit row, in one transaction. A
concurrent move makes the update miss and raises :class:`PhaseConflict`
rather than overwriting a newer phase; callers that pass ``expect_version``
fence on a version they read earlier (a long step checks nobody moved the
shop meanwhile).

Every change fires ``NOTIFY pgtenantproxy_routing`` (a statement trigger), so
every proxy instance's catalog refreshes at once; the catalog also polls every
second, so an instance that missed the notification sees the change within its
refresh interval anyway.
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import IllegalTransition, PhaseConflict

_COLUMNS = ("shop_id, phase, version, resume_phase, reason, changed_at, actor, epoch,"
            " fence = 'holding' AND fence_until > clock_timestamp() AS holding")


def _record(row: asyncpg.Record) -> ph.ShopPhase:
    return ph.ShopPhase(
        shop_id=int(row["shop_id"]), phase=row["phase"], version=int(row["version"]),
        resume_phase=row["resume_phase"], reason=row["reason"], changed_at=row["changed_at"],
        actor=row["actor"], epoch=int(row["epoch"]), holding=bool(row["holding"]),
    )


async def read_phase(conn: asyncpg.Connection | asyncpg.Pool, shop_id: int) -> ph.ShopPhase:
    """The shop's phase (``unified``, version 0, when it has no record)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM pgtenantproxy.shop_phases WHERE shop_id = $1", shop_id)
    return _record(row) if row is not None else ph.ShopPhase(shop_id)


async def read_phases(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, ph.ShopPhase]:
    """Every recorded shop's phase (shops without a record are in ``unified``)."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM pgtenantproxy.shop_phases ORDER BY shop_id")
    return {int(r["shop_id"]): _record(r) for r in rows}


async def transition(
    conn: asyncpg.Connection,
    shop_id: int,
    target: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    expect: Collection[str] | None = None,
    expect_version: int | None = None,
    action: str = "phase",
) -> ph.ShopPhase:
    """Move ``shop_id`` to ``target``; returns the new record.

    ``expect``: the phases the caller assumes the shop is in (refused
    otherwise, naming the actual phase); ``expect_version``: the version it
    read (refused with :class:`PhaseConflict` if the shop moved since).
    """
    async with conn.transaction():
        current = await read_phase(conn, shop_id)
        if expect_version is not None and current.version != expect_version:
            raise PhaseConflict(
                f"shop {shop_id} changed phase meanwhile (now {current.phase}, version {current.version}, "
                f"expected version {expect_version}); nothing was changed"
            )
        if expect is not None and current.phase not in expect:
            raise IllegalTransition(
                f"shop {shop_id} is in phase {current.phase}, not {' or '.join(sorted(expect))}; "
                f"it cannot move to {target}: {ph.NEEDS.get(target, 'see docs/migration.md')}"
            )
        ph.check(current, target)
        return await _write(conn, current, target, reason, actor, action)


async def force_phase(
    conn: asyncpg.Connection, shop_id: int, target: str, *, reason: str, actor: str | None = None
) -> ph.ShopPhase:
    """Set a shop's phase without the rule book (operator repair; audited as ``phase force``)."""
    if target not in ph.TRANSITIONS:
        raise IllegalTransition(f"unknown phase {target!r}; phases: {', '.join(ph.PHASES)}")
    async with conn.transaction():
        current = await read_phase(conn, shop_id)
        return await _write(conn, current, target, reason, actor, "phase force")


async def _write(
    conn: asyncpg.Connection, current: ph.ShopPhase, target: str, reason: str | None,
    actor: str | None, action: str,
) -> ph.ShopPhase:
    resume, stored_reason = ph.next_record(current, target, reason)
    if current.version == 0:
        row = await conn.fetchrow(
            f"""INSERT INTO pgtenantproxy.shop_phases (shop_id, phase, resume_phase, reason, actor)
                VALUES ($1, $2, $3, $4, coalesce($5, current_user))
                ON CONFLICT (shop_id) DO NOTHING RETURNING {_COLUMNS}""",
            current.shop_id, target, resume, stored_reason, actor,
        )
    else:
        row = await conn.fetchrow(
            f"""UPDATE pgtenantproxy.shop_phases
                SET phase = $2, version = version + 1, resume_phase = $3, reason = $4,
                    changed_at = clock_timestamp(), actor = coalesce($5, current_user),
                    epoch = nextval('pgtenantproxy.phase_epoch')
                WHERE shop_id = $1 AND version = $6 RETURNING {_COLUMNS}""",
            current.shop_id, target, resume, stored_reason, actor, current.version,
        )
    if row is None:
        raise PhaseConflict(
            f"shop {current.shop_id} changed phase while moving it from {current.phase} to {target}; "
            "nothing was changed (read its phase again)"
        )
    await audit(conn, shop_id=current.shop_id, action=action, step=f"{current.phase} -> {target}",
                status="done", detail=stored_reason, actor=actor)
    return _record(row)


async def set_fence(
    conn: asyncpg.Connection, shop_id: int, *, hold_s: float | None, actor: str | None = None,
    expect_version: int | None = None,
) -> ph.ShopPhase:
    """Hold the shop's writes in every proxy for up to ``hold_s`` seconds (None: release them).

    Not a phase change (the version stays), but a new epoch, so proxies
    acknowledge it like a transition. The deadline makes a fence whose
    holder died release by itself.
    """
    async with conn.transaction():
        current = await read_phase(conn, shop_id)
        if expect_version is not None and current.version != expect_version:
            raise PhaseConflict(f"shop {shop_id} changed phase meanwhile (now {current.phase}); "
                                "the fence was not changed")
        row = await conn.fetchrow(
            f"""UPDATE pgtenantproxy.shop_phases
                SET fence = CASE WHEN $2::float8 IS NULL THEN NULL ELSE 'holding' END,
                    fence_until = clock_timestamp() + make_interval(secs => $2::float8),
                    epoch = nextval('pgtenantproxy.phase_epoch')
                WHERE shop_id = $1 RETURNING {_COLUMNS}""",
            shop_id, hold_s,
        )
        if row is None:
            raise IllegalTransition(f"shop {shop_id} is in phase unified: there are no writes to hold")
        await audit(conn, shop_id=shop_id, action="fence", step="hold" if hold_s is not None else "release",
                    status="done", detail=None if hold_s is None else f"up to {hold_s:g} s", actor=actor)
        return _record(row)


async def current_epoch(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The newest epoch handed out (every proxy that saw it has seen every change up to it)."""
    return int(await conn.fetchval("SELECT coalesce(max(epoch), 0) FROM pgtenantproxy.shop_phases"))
