"""The write-mirroring tables and trigger functions, in the ``pgtenantproxy`` schema of a source database.

Versioned on their own (``pgtenantproxy.dualwrite_schema``), applied in order,
each step in one transaction under the advisory lock ``(SCHEMA_LOCK, 0)``, so
:func:`ensure_dualwrite_schema` is idempotent and safe from several processes.
It works on any database that is a mirroring source: unified today, a tenant
database when mirroring runs the other way (it creates the schema itself and
does not need the tenancy control tables).

Objects:

* ``outbox``: one row per captured row change (shop, table, primary key as a
  jsonb array in key-column order, op, txid, capture time), plus the retry
  bookkeeping (``attempts``, ``next_attempt_at``, ``last_error``). Capture
  maintains one index, the primary key ``(shop_id, id)``; ``outbox_retry`` is
  partial (entries waiting for a retry only), so a captured row never enters it.
  The table is a queue (every row is deleted soon after it is inserted), so it
  is vacuumed after a fixed number of deleted rows rather than a fraction of its
  size, and never because of inserts alone (a backlog waiting for the worker
  would otherwise be scanned again and again while it grows).
  ``outbox_id_seq`` has ``CACHE 1`` so that its ``last_value`` is an upper
  bound of every id handed out (the read-your-writes marker relies on it).
* ``dead_letters``: entries that failed every retry, with the error.
* ``mirror_state``: per shop, the degraded flag with its cause and reason, and
  progress (entries applied, last apply).
* ``capture_tables``: the tables capture is (``active``) or was installed on, with
  their key; kept after ``disable`` so the worker can still drain their entries.
* ``capture_key_change()``: a generic row trigger function (arguments: tenant
  column, table label, primary key columns) that fires only when an UPDATE
  changes the key or the tenant column (a ``WHEN`` clause, evaluated without
  calling a function): it rejects a tenant column change (SQLSTATE 23000, as
  ``pgtenantproxy harden`` does) and records the old key of a primary key
  change. ``reject_truncate()`` refuses TRUNCATE, which no trigger can see
  row by row. The capture functions proper are generated per table by
  :mod:`.capture`. All are SECURITY DEFINER with a fixed search_path, so
  application roles need no privilege on the control schema; a session that
  sets ``pgtenantproxy.mirror_apply = on`` (the mirror's own writes, for
  mirroring in the other direction) is not captured.
* ``write_fences`` (step 2): the database-level write fence of a shop
  (``holding`` during a cutover, ``closed`` once the shop's writes belong to
  another database), and ``fence_check(shops)``, which every capture function
  calls (unless ``mirror_apply`` is on) for the shops of its statement: see
  :mod:`.fence`. ``write_fence_gen`` (a sequence, not MVCC) and
  ``write_fence_clock`` (its value as of the last committed fence change)
  let a REPEATABLE READ / SERIALIZABLE writer whose snapshot predates a fence
  change notice it (SQLSTATE 40001, retry) although it cannot see the change.

Advisory lock namespaces (first int; the second is 0 or
:func:`~pgtenantproxy.tenancy.control_schema.shop_lock_key`):
``SCHEMA_LOCK`` 0x50475454, ``LEASE_LOCK`` 0x50475452, ``FENCE_LOCK``
0x50475453, ``FENCE_WRITE`` 0x50475457 (per shop: shared by every writer of
the shop until its transaction ends, exclusive by a cutover), ``FENCE_WRITE_ALL``
0x50475458 (second int 0: shared by statements writing more than
``FENCE_MAX_SHOPS`` shops, taken and released exclusively by a cutover).
Elsewhere: 0x50475450-51 (control schema), 0x50475455 (keeper), 0x50475456
(backfill).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.errors import DualWriteError

logger = logging.getLogger(__name__)

SCHEMA_LOCK = 0x50475454  # advisory lock namespace: dualwrite schema upgrades and capture installs
#: Advisory lock namespace of the per-shop worker lease on the source database (session lock).
LEASE_LOCK = 0x50475452
#: Advisory lock namespace of the per-shop apply fence on the target database (transaction lock).
FENCE_LOCK = 0x50475453
#: Advisory lock namespace of the per-shop DB write fence (shared by writers, exclusive by a cutover).
FENCE_WRITE = 0x50475457
#: Advisory lock namespace (second int 0) shared by statements that write more than FENCE_MAX_SHOPS shops.
FENCE_WRITE_ALL = 0x50475458
#: A statement writing at most this many shops takes each shop's FENCE_WRITE lock.
FENCE_MAX_SHOPS = 8
APPLY_SETTING = "pgtenantproxy.mirror_apply"

_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION pgtenantproxy.capture_key_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    o jsonb := to_jsonb(OLD);
    k jsonb := '[]';
    i integer;
BEGIN
    IF (o -> TG_ARGV[0]) IS DISTINCT FROM (to_jsonb(NEW) -> TG_ARGV[0]) THEN
        RAISE EXCEPTION 'changing column % of an existing row of % is not allowed', TG_ARGV[0], TG_ARGV[1]
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'A row belongs to one shop for life: insert a new row for the other shop instead.';
    END IF;
    IF current_setting('pgtenantproxy.mirror_apply', true) = 'on' OR o ->> TG_ARGV[0] IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 2 .. TG_NARGS - 1 LOOP
        k := k || jsonb_build_array(o -> TG_ARGV[i]);
    END LOOP;
    INSERT INTO pgtenantproxy.outbox (shop_id, tbl, pk, op)
    VALUES ((o ->> TG_ARGV[0])::bigint, TG_ARGV[1], k, 'D');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgtenantproxy.reject_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % is not allowed while write mirroring is enabled', TG_ARGV[0]
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Delete the rows with DELETE (which is mirrored), '
                     'or run "pgtenantproxy dual-write disable" first.';
END
$fn$;
"""


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    sql: str


STEPS: tuple[Step, ...] = (
    Step(
        1,
        "dualwrite: outbox, dead letters, mirror state, capture tables and trigger functions",
        """
        CREATE SEQUENCE pgtenantproxy.outbox_id_seq AS bigint CACHE 1;
        CREATE TABLE pgtenantproxy.outbox (
            id               bigint NOT NULL DEFAULT nextval('pgtenantproxy.outbox_id_seq'),
            shop_id          bigint NOT NULL,
            tbl              text NOT NULL,
            pk               jsonb NOT NULL,
            op               "char" NOT NULL,
            txid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
            captured_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts         integer NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz,
            last_error       text,
            PRIMARY KEY (shop_id, id)
        );
        ALTER SEQUENCE pgtenantproxy.outbox_id_seq OWNED BY pgtenantproxy.outbox.id;
        CREATE INDEX outbox_retry ON pgtenantproxy.outbox (shop_id, next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;
        ALTER TABLE pgtenantproxy.outbox SET (autovacuum_vacuum_scale_factor = 0.0,
            autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_threshold = -1);
        CREATE TABLE pgtenantproxy.dead_letters (
            id           bigint PRIMARY KEY,
            shop_id      bigint NOT NULL,
            tbl          text NOT NULL,
            pk           jsonb NOT NULL,
            op           "char" NOT NULL,
            txid         xid8 NOT NULL,
            captured_at  timestamptz NOT NULL,
            attempts     integer NOT NULL,
            error        text NOT NULL,
            failed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX dead_letters_shop ON pgtenantproxy.dead_letters (shop_id, id);
        CREATE TABLE pgtenantproxy.mirror_state (
            shop_id          bigint PRIMARY KEY,
            degraded         boolean NOT NULL DEFAULT false,
            cause            text CHECK (cause IN ('dead_letters', 'unreachable')),
            reason           text,
            degraded_at      timestamptz,
            applied_entries  bigint NOT NULL DEFAULT 0,
            last_applied_at  timestamptz,
            updated_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE pgtenantproxy.capture_tables (
            tbl            text PRIMARY KEY,
            schema_name    text NOT NULL,
            table_name     text NOT NULL,
            tenant_column  text NOT NULL,
            pk_columns     text[] NOT NULL,
            active         boolean NOT NULL DEFAULT true,
            installed_at   timestamptz NOT NULL DEFAULT now(),
            removed_at     timestamptz
        );
        """
        + _FUNCTIONS,
    ),
    Step(
        2,
        "dualwrite: per-shop write fences checked by the capture functions",
        f"""
        CREATE TABLE pgtenantproxy.write_fences (
            shop_id  bigint PRIMARY KEY,
            state    text NOT NULL CHECK (state IN ('holding', 'closed')),
            reason   text,
            since    timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE SEQUENCE pgtenantproxy.write_fence_gen AS bigint CACHE 1;
        CREATE TABLE pgtenantproxy.write_fence_clock (
            one  boolean PRIMARY KEY DEFAULT true CHECK (one),
            gen  bigint NOT NULL
        );
        INSERT INTO pgtenantproxy.write_fence_clock (gen) VALUES (nextval('pgtenantproxy.write_fence_gen'));

        -- Called only by the capture functions (SECURITY DEFINER, search_path pg_catalog, pg_temp),
        -- whose settings it runs under: no SET clause of its own, which would cost every writer a
        -- configuration save and restore per statement.
        CREATE FUNCTION pgtenantproxy.fence_check(shops bigint[]) RETURNS void
        LANGUAGE plpgsql AS $fn$
        DECLARE
            s bigint;
        BEGIN
            IF cardinality(shops) <= {FENCE_MAX_SHOPS} THEN
                FOREACH s IN ARRAY shops LOOP
                    PERFORM pg_advisory_xact_lock_shared({FENCE_WRITE}, s::bit(32)::int4);
                END LOOP;
            ELSE
                PERFORM pg_advisory_xact_lock_shared({FENCE_WRITE_ALL}, 0);
                FOR s IN SELECT f.shop_id FROM pgtenantproxy.write_fences f WHERE f.shop_id = ANY (shops)
                         ORDER BY f.shop_id LOOP
                    PERFORM pg_advisory_xact_lock_shared({FENCE_WRITE}, s::bit(32)::int4);
                END LOOP;
            END IF;
            SELECT f.shop_id INTO s FROM pgtenantproxy.write_fences f
            WHERE f.shop_id = ANY (shops) AND f.state = 'closed' ORDER BY f.shop_id LIMIT 1;
            IF s IS NOT NULL THEN
                RAISE EXCEPTION 'shop % writes to its own database since its cutover: '
                                'this database no longer accepts its writes', s
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = 'Connect through pgtenantproxy; a transaction that began before the '
                                 'cutover must be retried.';
            END IF;
            IF current_setting('transaction_isolation') <> 'read committed'
               AND (SELECT last_value FROM pgtenantproxy.write_fence_gen)
                   > (SELECT c.gen FROM pgtenantproxy.write_fence_clock c) THEN
                RAISE EXCEPTION 'a write fence changed after this transaction took its snapshot'
                    USING ERRCODE = 'serialization_failure',
                          HINT = 'Retry the transaction (a shop is being cut over).';
            END IF;
        END
        $fn$;
        REVOKE ALL ON FUNCTION pgtenantproxy.fence_check(bigint[]) FROM PUBLIC;
        """,
    ),
)

LATEST_VERSION = STEPS[-1].version


async def dualwrite_schema_version(conn: asyncpg.Connection) -> int:
    """The version the database is at (0 when the mirroring tables do not exist)."""
    if not await conn.fetchval("SELECT to_regclass('pgtenantproxy.dualwrite_schema') IS NOT NULL"):
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM pgtenantproxy.dualwrite_schema"))


async def ensure_dualwrite_schema(conn: asyncpg.Connection) -> int:
    """Create or upgrade the mirroring tables; returns the version they are at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", SCHEMA_LOCK)
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS pgtenantproxy;"
            "REVOKE ALL ON SCHEMA pgtenantproxy FROM PUBLIC;"
            "CREATE TABLE IF NOT EXISTS pgtenantproxy.dualwrite_schema ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await dualwrite_schema_version(conn)
        if current > LATEST_VERSION:
            raise DualWriteError(
                f"the mirroring tables are at version {current}, newer than this pgtenantproxy knows "
                f"({LATEST_VERSION}): upgrade pgtenantproxy"
            )
        for step in STEPS:
            if step.version <= current:
                continue
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO pgtenantproxy.dualwrite_schema (version, description) VALUES ($1, $2)",
                step.version,
                step.description,
            )
            logger.info("mirroring tables upgraded to version %s: %s", step.version, step.description)
    return LATEST_VERSION if current < LATEST_VERSION else current
