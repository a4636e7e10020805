"""Reference tables: a read-only copy of each chosen global table in every shop database, kept current.

So that a single shop's read joining its tenant tables with global tables can
run on the shop's own database, every shop database (phase ``provisioned`` and
beyond, :data:`~pgtenantproxy.lifecycle.reference.HAS_DATABASE`) holds a copy
of each ``[[tenancy.reference_tables]]`` table under the same qualified name,
with exactly the listed columns (a filtered table: only the shop's rows),
its primary key, owned by the tenant server's admin, ``SELECT`` granted to the
shop's role and nothing else (the role cannot write them).

:meth:`ReferenceSync.run_once` (the phase keeper runs it every ``[tenancy]
reference_sync_interval_s``; ``pgtenantproxy reference sync`` once):

1. on unified: the tables' definitions (:mod:`.reference_catalog`), the
   capture triggers put on exactly the valid ones (changes then land in
   ``pgtenantproxy.reference_changes``), and the *horizon* ``H``: the largest
   change id, read under ``LOCK ... IN SHARE MODE`` of the change log, which
   waits for no writer but succeeds only when no transaction that logged a
   change is still open, so every id up to ``H`` is committed (ids are taken
   in order, and a later writer gets a larger one). ``NOWAIT`` first; when a
   writer is in flight the last horizon is used, and only when it is older
   than :data:`STALE_HORIZON_S` does the sync queue for the lock, at most
   :data:`HORIZON_WAIT`, once per :data:`STALE_HORIZON_S` (writers wait behind it);
2. per shop (at most ``parallel`` at a time; the shop's copies are synced by
   one process at a time: session advisory lock ``(REFERENCE_LOCK, 0)`` on its
   own database), per table:

   * **fill** (no state row yet, the definition changed, a NULL key = a
     TRUNCATE, or the copy vanished): the (filtered) rows of the listed
     columns, read from unified after ``H`` was taken, replace the copy's
     content in one transaction on the shop database (the table created or,
     when its definition changed, re-created; a table of that name that is not
     a copy, e.g. a clone made while the table was a tenant table, is dropped
     and re-created unless the shop's writes are on its own database), then
     ``reference_state`` gets ``applied_id = H``;
   * **refresh**: the changes ``applied_id < id <= H`` in batches of at most
     ``batch``, their distinct keys, the current (filtered) rows of those keys
     from unified; one shop transaction deletes the keys and inserts the
     rows; then ``applied_id`` moves on.

   Both are idempotent (a key re-applied gets its current row again), so a
   crash between the shop's commit and the state update only re-applies.
   Rows travel as ``to_jsonb`` text (every type by its text form, under the
   comparison settings of :mod:`.checksums`); unfiltered tables' changes and
   rows are read once per round for every shop at the same point;
3. the size guard: a table with more than ``[tenancy] reference_max_rows``
   rows on unified (filtered: its largest shop's) is refused at fill time,
   and a copy that would grow past it is not refreshed (its lag then grows);
4. copies and state rows of tables no longer configured (or no longer
   valid) are dropped, state rows of shops without a database forgotten, and
   ``reference_changes`` pruned up to the lowest ``applied_id`` of each table,
   only while no other round runs (every round holds ``(PRUNE_LOCK, 0)``
   shared on unified, pruning takes it exclusive or is skipped): a round with
   an older horizon may record a copy read before changes pruned meanwhile.

INVARIANT: a state row's ``applied_id`` never passes a change missing from
the copy, so :func:`~pgtenantproxy.lifecycle.reference.reference_lag` (what
routing reads) is never too low. The horizon assumes the change log's id
sequence keeps its default ``CACHE 1``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.reference import CHANGES, HAS_DATABASE, PRUNE_LOCK, REFERENCE_LOCK, STATE
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration import checksums as cs
from pgtenantproxy.migration.reference_catalog import (
    ReferenceDef,
    install_capture,
    is_copy_marker,
    read_definitions,
)
from pgtenantproxy.sqltext import QualifiedName, ident, literal
from pgtenantproxy.tenancy.crypto import CryptoError
from pgtenantproxy.tenancy.errors import TenancyError, describe
from pgtenantproxy.tenancy.registry import TenantCredentials
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgtenantproxy-reference"
BATCH = 1000
MAX_BATCHES = 20  # per shop and table in one round
PARALLEL = 4
STALE_HORIZON_S = 5.0
HORIZON_WAIT = "200ms"
LOCK_TIMEOUT = "5s"  # DDL and DELETE on a shop's copy, behind the application's reads
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, MigrationError,
            TenancyError, CryptoError)

FILLED = "filled"
RECREATED = "recreated"
REFRESHED = "refreshed"
CURRENT = "current"
DROPPED = "dropped"
FAILED = "failed"

T = TypeVar("T")


class ReferenceCopyError(MigrationError):
    """A copy that cannot be made or kept (the message names the shop or table and the key at fault)."""


@dataclass
class TableSync:
    """What one round did to one shop's copy of one table."""

    shop_id: int
    table: str
    action: str
    rows: int | None = None
    keys: int = 0  # keys re-applied by a refresh
    applied_id: int | None = None
    detail: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "table": self.table, "action": self.action, "rows": self.rows,
                "keys": self.keys, "applied_id": self.applied_id, "detail": self.detail, "error": self.error}

    def describe(self) -> str:
        if self.error is not None:
            return f"shop {self.shop_id}: {self.table}: failed: {self.error}"
        what = {REFRESHED: f"refreshed ({self.keys} keys)", DROPPED: "copy dropped"}.get(
            self.action, self.action)
        rows = f", {self.rows} rows" if self.rows is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"shop {self.shop_id}: {self.table}: {what}{rows}{detail}"


class ReferenceReport(list[TableSync]):
    """One round: per shop and table what was done (the list), and what concerned whole tables."""

    def __init__(self) -> None:
        super().__init__()
        self.horizon: int | None = None
        #: label -> why the table is not copied at all (definition, size guard).
        self.table_errors: dict[str, str] = {}
        self.installed: list[str] = []
        self.removed: list[str] = []
        self.pruned = 0
        self.seconds = 0.0

    @property
    def ok(self) -> bool:
        return not self.table_errors and all(r.error is None for r in self)

    def errors(self) -> list[str]:
        return [*self.table_errors.values(), *(r.describe() for r in self if r.error is not None)]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "horizon": self.horizon, "seconds": round(self.seconds, 3),
                "table_errors": dict(self.table_errors), "capture_installed": list(self.installed),
                "capture_removed": list(self.removed), "pruned": self.pruned,
                "copies": [r.as_dict() for r in self]}


@dataclass
class _Round:
    """What the shops of one round share: the horizon, the definitions, memoized unified reads."""

    horizon: int
    defs: dict[str, ReferenceDef]
    tops: dict[str, int]  # table -> its largest change id up to the horizon
    phases: dict[int, ph.ShopPhase]
    max_rows: int
    skipped: set[str]  # tables whose triggers could not be changed this round: neither synced nor dropped
    memo: dict[tuple[Any, ...], asyncio.Task[Any]]

    async def once(self, key: tuple[Any, ...], make: Callable[[], Awaitable[T]]) -> T:
        """``make()`` run once per key in this round (concurrent shops share the task)."""
        task = self.memo.get(key)
        if task is None:
            async def run() -> T:
                return await make()
            task = self.memo[key] = asyncio.ensure_future(run())
        result: T = await asyncio.shield(task)
        return result


class ReferenceSync:
    """Keeps every shop's reference copies current (see the module doc); a keeper ``PeriodicJob``."""

    def __init__(self, tenancy: TenancyService, config: Callable[[], Config] | None = None, *,
                 parallel: int = PARALLEL, batch: int = BATCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tenancy = tenancy
        self._config = config or (lambda: tenancy.config)
        self.parallel = parallel
        self.batch = batch
        self._clock = clock
        self._horizon: tuple[int, float] | None = None  # (id, when taken)
        self._waited_at = float("-inf")

    @property
    def interval_s(self) -> float:
        return float(self._config().tenancy.reference_sync_interval_s)

    async def run_once(self, shops: Sequence[int] | None = None) -> ReferenceReport:
        """One round over every shop with a database (``shops``: only those; no pruning then)."""
        started = self._clock()
        report = ReferenceReport()
        async with self.tenancy.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock_shared($1, 0)", PRUNE_LOCK)
            try:
                tidy = await self._round(conn, shops, report)
            finally:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock_shared($1, 0)", PRUNE_LOCK)
            if tidy is not None and shops is None:
                report.pruned = await self._tidy(conn, *tidy)
        report.seconds = self._clock() - started
        return report

    async def _round(self, conn: asyncpg.Connection, shops: Sequence[int] | None,
                     report: ReferenceReport) -> tuple[list[int], set[str], int] | None:
        """Everything but the pruning (under the shared ``PRUNE_LOCK``); what :meth:`_tidy` needs."""
        tenancy = self._config().tenancy
        found = await read_definitions(conn, tenancy.reference_tables)
        defs = {label: d for label, d in found.items() if isinstance(d, ReferenceDef)}
        report.table_errors = {label: str(d) for label, d in found.items() if not isinstance(d, ReferenceDef)}
        capture = await install_capture(conn, list(defs.values()))
        report.installed, report.removed = capture.installed, capture.removed
        for label, why in capture.failed.items():  # left as they are this round (not dropped)...
            defs.pop(label, None)
            report.table_errors[label] = why
        if capture.uncaptured:  # ...but copies nothing keeps current are no longer usable
            await conn.execute(f"DELETE FROM {STATE} WHERE tbl = ANY($1::text[])", capture.uncaptured)
        for label in report.installed:
            logger.info("reference capture installed on %s", label)
        states = await _states(conn)
        if not defs and not states:  # nothing configured and nothing left over: only forget old changes
            await conn.execute(f"DELETE FROM {CHANGES}")
            return None
        horizon = report.horizon = await self._take_horizon(conn)
        phases = await read_phases(conn)
        tops = {r["tbl"]: int(r["top"]) for r in await conn.fetch(
            f"SELECT tbl, max(id) AS top FROM {CHANGES} WHERE id <= $1 GROUP BY tbl", horizon or 0)}
        with_db = sorted(s for s, r in phases.items() if r.effective in HAS_DATABASE)
        chosen = with_db if shops is None else [s for s in sorted(set(shops)) if s in with_db]
        for shop in sorted(set(shops or ()) - set(with_db)):
            report.append(TableSync(shop, "*", FAILED, error="no database of its own (phase "
                                    f"{phases.get(shop, ph.ShopPhase(shop)).phase})"))
        if horizon is None:
            if defs:
                report.table_errors["*"] = ("no horizon yet: transactions that changed reference tables stay "
                                            "open; trying again next round")
            return None
        rnd = _Round(horizon, defs, tops, phases, tenancy.reference_max_rows, set(capture.failed), {})
        slots = asyncio.Semaphore(self.parallel)

        async def one(shop: int) -> list[TableSync]:
            mine = {label: s for (sh, label), s in states.items() if sh == shop}
            if not _needs_work(mine, defs, tops, horizon, rnd.skipped):
                return [TableSync(shop, label, CURRENT, mine[label][2], applied_id=mine[label][0])
                        for label in defs]
            async with slots:
                return await self._sync_shop(rnd, shop)

        for results in await asyncio.gather(*(one(s) for s in chosen)):
            report.extend(results)
        for task in rnd.memo.values():  # results nobody awaited (a shop failed first): retrieve exceptions
            if task.done() and not task.cancelled():
                task.exception()
        for result in report:
            if result.error is not None and result.error.startswith(f"reference table {result.table}:"):
                report.table_errors.setdefault(result.table, result.error)
        return with_db, {*defs, *rnd.skipped}, horizon

    # --- the horizon -----------------------------------------------------------------------------
    async def _take_horizon(self, conn: asyncpg.Connection) -> int | None:
        now = self._clock()
        found = await _locked_max(conn, None)
        if found is None and (self._horizon is None or now - self._horizon[1] >= STALE_HORIZON_S) \
                and now - self._waited_at >= STALE_HORIZON_S:
            self._waited_at = now
            found = await _locked_max(conn, HORIZON_WAIT)
        if found is None:
            return None if self._horizon is None else self._horizon[0]
        self._horizon = (found, now)
        return found

    # --- one shop ----------------------------------------------------------------------------------
    async def _sync_shop(self, rnd: _Round, shop: int) -> list[TableSync]:
        try:
            creds = await self.tenancy.registry.get(shop)
            conn = await self._connect(creds)
        except FAILURES as exc:
            return [TableSync(shop, label, FAILED, error=describe(exc)) for label in rnd.defs] or [
                TableSync(shop, "*", FAILED, error=describe(exc))]
        results: list[TableSync] = []
        try:
            await conn.execute("SELECT pg_advisory_lock($1, 0)", REFERENCE_LOCK)
            states = {label: s for (_, label), s in (await _states(self.tenancy.pool, shop)).items()}
            for label, defn in rnd.defs.items():
                try:
                    results.append(await self._sync_table(rnd, conn, creds, defn, states.get(label)))
                except FAILURES as exc:
                    text = str(exc) if isinstance(exc, ReferenceCopyError) else describe(exc)
                    logger.warning("shop %s: reference copy of %s: %s", shop, label, text)
                    results.append(TableSync(shop, label, FAILED, error=text))
            for label in sorted(set(states) - set(rnd.defs) - rnd.skipped):
                try:
                    results.append(await self._drop(conn, shop, label))
                except FAILURES as exc:
                    results.append(TableSync(shop, label, FAILED, error=describe(exc)))
        finally:
            await conn.close(timeout=2.0)
        return results

    async def _connect(self, creds: TenantCredentials) -> asyncpg.Connection:
        """The tenant server's admin on the shop's database, with the comparison settings."""
        kwargs = self.tenancy.servers.get(creds.server).connect_kwargs(creds.database)
        kwargs["server_settings"] = {"application_name": APPLICATION_NAME, **cs.SESSION_SETTINGS}
        return await asyncpg.connect(**kwargs)

    async def _sync_table(self, rnd: _Round, conn: asyncpg.Connection, creds: TenantCredentials,
                          defn: ReferenceDef, state: tuple[int, str, int] | None) -> TableSync:
        shop = creds.shop_id
        if state is None or state[1] != defn.signature:
            return await self._fill(rnd, conn, creds, defn)
        applied = state[0]
        result = TableSync(shop, defn.label, CURRENT, state[2], applied_id=applied)
        for _ in range(MAX_BATCHES):
            if applied >= min(rnd.tops.get(defn.label, 0), rnd.horizon):
                break
            changes = await rnd.once(("changes", defn.label, applied),
                                     functools.partial(self._changes, defn.label, applied, rnd.horizon))
            if any(key is None for _, key in changes):
                return await self._fill(rnd, conn, creds, defn, why="a TRUNCATE")
            keys = sorted({key for _, key in changes if key is not None})
            try:
                rows = await self._apply(rnd, conn, shop, defn, keys)
            except asyncpg.UndefinedTableError:
                return await self._fill(rnd, conn, creds, defn, why="the copy was missing")
            applied = changes[-1][0] if len(changes) >= self.batch else rnd.horizon
            await _record(self.tenancy.pool, shop, defn, applied, rows)
            result.action, result.rows, result.applied_id = REFRESHED, rows, applied
            result.keys += len(keys)
        return result

    async def _changes(self, label: str, after: int, upto: int) -> list[tuple[int, str | None]]:
        rows = await self.tenancy.pool.fetch(
            f"SELECT id, key::text AS key FROM {CHANGES} WHERE tbl = $1 AND id > $2 AND id <= $3"
            " ORDER BY id LIMIT $4", label, after, upto, self.batch)
        return [(int(r["id"]), r["key"]) for r in rows]

    async def _apply(self, rnd: _Round, conn: asyncpg.Connection, shop: int, defn: ReferenceDef,
                     keys: list[str]) -> int:
        """The keys' current rows replace theirs in the copy (one transaction); the copy's row count."""
        keys_json = "[" + ",".join(keys) + "]"
        who = shop if defn.shop_column else None
        rows_json = await rnd.once(("rows", defn.label, keys_json, who),
                                   lambda: self._current_rows(defn, keys_json, who))
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {literal(LOCK_TIMEOUT)}")
            await conn.execute(f"DELETE FROM {defn.name.sql} AS x USING jsonb_array_elements($1::jsonb)"
                               f" AS k(key) WHERE {_key_match(defn)}", keys_json)
            await conn.execute(_insert_sql(defn), rows_json)
            count = int(await conn.fetchval(f"SELECT count(*) FROM {defn.name.sql}"))
            if count > rnd.max_rows:
                raise ReferenceCopyError(_too_big(defn, count, rnd.max_rows, "its copy would hold"))
        return count

    async def _current_rows(self, defn: ReferenceDef, keys_json: str, shop: int | None) -> str:
        cols = ", ".join(f"x.{ident(c.name)}" for c in defn.columns)
        where = f" WHERE {cs.shop_filter(defn.info, '$2::bigint', 'x')}" if shop is not None else ""
        sql = (f"SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]')::text FROM (SELECT {cols}"
               f" FROM jsonb_array_elements($1::jsonb) AS k(key) JOIN {defn.name.sql} AS x"
               f" ON {_key_match(defn)}{where}) AS s")
        async with self.tenancy.pool.acquire() as conn, cs.comparable(conn):
            return str(await conn.fetchval(sql, keys_json, *([shop] if shop is not None else [])))

    async def _fill(self, rnd: _Round, conn: asyncpg.Connection, creds: TenantCredentials,
                    defn: ReferenceDef, *, why: str | None = None) -> TableSync:
        """The copy's whole content replaced by unified's (filtered) rows (created or re-created first)."""
        shop = creds.shop_id
        biggest = await rnd.once(("guard", defn.label), lambda: self._largest(defn))
        if biggest > rnd.max_rows:
            raise ReferenceCopyError(_too_big(defn, biggest, rnd.max_rows, "unified holds"))
        who = shop if defn.shop_column else None
        rows_json, count = await rnd.once(("all", defn.label, who), lambda: self._all_rows(defn, who))
        action, detail = FILLED, why and f"refilled after {why}"
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {literal(LOCK_TIMEOUT)}")
            note = await _copy_note(conn, defn.name)
            if note is not None and note != defn.marker():
                if not is_copy_marker(note, defn.label):
                    phase = rnd.phases.get(shop, ph.ShopPhase(shop))
                    if phase.effective in ph.OWN_DATABASE:
                        raise ReferenceCopyError(
                            f"the shop's database has a table {defn.label} that is not a reference copy, "
                            f"and the shop's writes are on that database (phase {phase.phase}): dropping it "
                            "could lose rows; roll the shop back (pgtenantproxy rollback) or leave the table "
                            "out of [[tenancy.reference_tables]]")
                    detail = "replaced a table of that name that was not a reference copy"
                    logger.warning("shop %s: %s on its database was not a reference copy (a tenant-table "
                                   "clone?): dropped and re-created as a read-only copy", shop, defn.label)
                else:
                    detail = "its definition changed"
                await conn.execute(f"DROP TABLE {defn.name.sql} CASCADE")
                action, note = RECREATED, None
            if note is None:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(defn.name.schema)};"
                                   f"{defn.create_sql()};"
                                   f"COMMENT ON TABLE {defn.name.sql} IS {literal(defn.marker())}")
            else:
                await conn.execute(f"DELETE FROM {defn.name.sql}")
            role = ident(creds.user)
            await conn.execute(f"GRANT USAGE ON SCHEMA {ident(defn.name.schema)} TO {role};"
                               f"REVOKE ALL ON TABLE {defn.name.sql} FROM PUBLIC, {role};"
                               f"GRANT SELECT ON TABLE {defn.name.sql} TO {role}")
            await conn.execute(_insert_sql(defn), rows_json)
        await _record(self.tenancy.pool, shop, defn, rnd.horizon, count)
        return TableSync(shop, defn.label, action, count, applied_id=rnd.horizon, detail=detail)

    async def _largest(self, defn: ReferenceDef) -> int:
        """Rows of the table on unified (filtered: of its largest shop)."""
        if defn.shop_column is None:
            sql = f"SELECT count(*) FROM {defn.name.sql}"
        else:
            sql = (f"SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM {defn.name.sql}"
                   f" GROUP BY {ident(defn.shop_column)}) AS s")
        return int(await self.tenancy.pool.fetchval(sql))

    async def _all_rows(self, defn: ReferenceDef, shop: int | None) -> tuple[str, int]:
        where = f" WHERE {cs.shop_filter(defn.info, '$1::bigint')}" if shop is not None else ""
        sql = (f"SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]')::text AS rows, count(*) AS n FROM"
               f" (SELECT {defn.column_list} FROM {defn.name.sql}{where}) AS s")
        async with self.tenancy.pool.acquire() as conn, cs.comparable(conn):
            row = await conn.fetchrow(sql, *([shop] if shop is not None else []))
        assert row is not None
        return str(row["rows"]), int(row["n"])

    async def _drop(self, conn: asyncpg.Connection, shop: int, label: str) -> TableSync:
        """A table no longer copied: its copy dropped (when it is one) and its state forgotten."""
        name = QualifiedName.parse(label)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {literal(LOCK_TIMEOUT)}")
            if is_copy_marker(await _copy_note(conn, name), label):
                await conn.execute(f"DROP TABLE {name.sql}")
        await self.tenancy.pool.execute(f"DELETE FROM {STATE} WHERE shop_id = $1 AND tbl = $2", shop, label)
        logger.info("shop %s: reference copy of %s dropped (no longer configured)", shop, label)
        return TableSync(shop, label, DROPPED)

    async def _tidy(self, conn: asyncpg.Connection, with_db: list[int], live: set[str], horizon: int) -> int:
        """Forget state rows of shops without a database; prune the changes every shop has applied (of the
        ``live`` tables: up to the lowest ``applied_id``; of the others: all up to the horizon). Only while
        no other round runs (``PRUNE_LOCK`` exclusive, else skipped): a round with an older horizon could
        otherwise record a copy read before changes that are pruned meanwhile."""
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, 0)", PRUNE_LOCK):
            return 0
        try:
            await conn.execute(f"DELETE FROM {STATE} WHERE NOT (shop_id = ANY($1::bigint[]))", with_db)
            lowest = {r["tbl"]: int(r["low"]) for r in await conn.fetch(
                f"SELECT tbl, min(applied_id) AS low FROM {STATE} GROUP BY tbl")}
            pruned = 0
            for label in sorted(live):
                upto = min(lowest.get(label, horizon), horizon)
                status = await conn.execute(f"DELETE FROM {CHANGES} WHERE tbl = $1 AND id <= $2", label, upto)
                pruned += int(status.split()[-1])
            status = await conn.execute(
                f"DELETE FROM {CHANGES} WHERE NOT (tbl = ANY($1::text[])) AND id <= $2", sorted(live),
                horizon)
            return pruned + int(status.split()[-1])
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, 0)", PRUNE_LOCK)


async def sync_shop_references(tenancy: TenancyService, shop_id: int, *,
                               config: Config | None = None) -> ReferenceReport:
    """Fill or refresh one shop's reference copies now (backfill, verification)."""
    return await ReferenceSync(tenancy, (lambda: config) if config is not None else None).run_once([shop_id])


# --- helpers -------------------------------------------------------------------------------------
async def _locked_max(conn: asyncpg.Connection, wait: str | None) -> int | None:
    """The largest change id while no transaction that logged a change is open (None: one is)."""
    mode = "IN SHARE MODE" if wait is not None else "IN SHARE MODE NOWAIT"
    try:
        async with conn.transaction():
            if wait is not None:
                await conn.execute(f"SET LOCAL lock_timeout = {literal(wait)}")
            await conn.execute(f"LOCK TABLE {CHANGES} {mode}")
            return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {CHANGES}"))
    except asyncpg.LockNotAvailableError:
        return None


async def _states(conn: asyncpg.Connection | asyncpg.Pool,
                  shop: int | None = None) -> dict[tuple[int, str], tuple[int, str, int]]:
    """(shop, table) -> (applied_id, signature, rows)."""
    where = "" if shop is None else " WHERE shop_id = $1"
    rows = await conn.fetch(f"SELECT shop_id, tbl, applied_id, signature, rows FROM {STATE}{where}",
                            *([] if shop is None else [shop]))
    return {(int(r["shop_id"]), r["tbl"]): (int(r["applied_id"]), r["signature"], int(r["rows"]))
            for r in rows}


def _needs_work(mine: dict[str, tuple[int, str, int]], defs: dict[str, ReferenceDef], tops: dict[str, int],
                horizon: int, skipped: set[str]) -> bool:
    if set(mine) - set(defs) - skipped:
        return True
    for label, defn in defs.items():
        state = mine.get(label)
        if state is None or state[1] != defn.signature or state[0] < min(tops.get(label, 0), horizon):
            return True
    return False


async def _record(pool: asyncpg.Pool, shop: int, defn: ReferenceDef, applied: int, rows: int) -> None:
    await pool.execute(
        f"INSERT INTO {STATE} (shop_id, tbl, applied_id, applied_at, rows, signature)"
        " VALUES ($1, $2, $3, clock_timestamp(), $4, $5) ON CONFLICT (shop_id, tbl) DO UPDATE SET"
        " applied_id = EXCLUDED.applied_id, applied_at = EXCLUDED.applied_at, rows = EXCLUDED.rows,"
        " signature = EXCLUDED.signature", shop, defn.label, applied, rows, defn.signature)


async def _copy_note(conn: asyncpg.Connection, name: QualifiedName) -> str | None:
    """None when the shop database has no table of that name, else its comment ('' without one)."""
    row = await conn.fetchrow("SELECT c.oid, coalesce(obj_description(c.oid, 'pg_class'), '') AS note"
                              " FROM (SELECT to_regclass($1) AS oid) AS c", name.sql)
    return None if row is None or row["oid"] is None else str(row["note"])


def _key_match(defn: ReferenceDef) -> str:
    """``x.a = (k.key ->> 0)::type AND ...``: a row of alias ``x`` matched to a jsonb key ``k.key``."""
    info = defn.info
    return " AND ".join(f"x.{ident(c.name)} = (k.key ->> {i})::{c.type_sql}" for i, c in enumerate(info.pk))


def _insert_sql(defn: ReferenceDef) -> str:
    """``$1``: a jsonb array of rows (by column name) into the copy."""
    return (f"INSERT INTO {defn.name.sql} ({defn.column_list}) SELECT {defn.column_list}"
            f" FROM jsonb_populate_recordset(NULL::{defn.name.sql}, $1::jsonb)")


def _too_big(defn: ReferenceDef, count: int, limit: int, where: str) -> str:
    whose = " for its largest shop" if defn.shop_column and where == "unified holds" else ""
    return (f"reference table {defn.label}: {where} {count} rows{whose}, more than [tenancy] "
            f"reference_max_rows ({limit}): its copies are refused (raise the limit, filter it by "
            "shop_column, or leave it out of [[tenancy.reference_tables]])")


__all__ = ["ReferenceCopyError", "ReferenceReport", "ReferenceSync", "TableSync", "sync_shop_references"]
