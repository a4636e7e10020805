"""The ``pgtenantproxy`` control schema in the unified database, created and upgraded in place.

Every change to the control schema is a numbered step in :data:`MIGRATIONS`,
applied in order, each in its own transaction together with its row in
``pgtenantproxy.schema_version``. :func:`ensure_control_schema` is idempotent and
safe to call from several processes at once (a transaction-level advisory lock
serialises upgrades); it refuses to run against a schema newer than this
program. Later components add their tables by appending steps here: never edit
a released step.

Advisory lock keys used by the control plane (two-int form, first int = namespace):

* ``(CONTROL_LOCK, 0)``: control schema upgrades;
* ``(CONTROL_LOCK, 1)``: tenant server placement (count + claim, so concurrent
  provisions spread evenly);
* ``(SHOP_LOCK, shop)``: everything that creates or drops a shop's database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.tenancy.errors import ControlSchemaError

logger = logging.getLogger(__name__)

SCHEMA = "pgtenantproxy"
CONTROL_LOCK = 0x50475450  # "PGTP"
SHOP_LOCK = 0x50475451
PLACEMENT_LOCK_ID = 1
UPGRADE_LOCK_ID = 0

#: tenant_provisions.state values.
PROVISIONING = "provisioning"
PROVISIONED = "provisioned"
FAILED = "failed"
DEPROVISIONED = "deprovisioned"
STATES = (PROVISIONING, PROVISIONED, FAILED, DEPROVISIONED)


@dataclass(frozen=True)
class ControlMigration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[ControlMigration, ...] = (
    ControlMigration(
        1,
        "tenancy: provisioning state, audit log, encrypted credential registry, tenant migrations",
        """
        CREATE TABLE pgtenantproxy.tenant_provisions (
            shop_id         bigint PRIMARY KEY,
            state           text NOT NULL CHECK (state IN
                                ('provisioning', 'provisioned', 'failed', 'deprovisioned')),
            server          text,
            database_name   text NOT NULL,
            role_name       text NOT NULL,
            step            text,
            error           text,
            schema_version  integer NOT NULL DEFAULT 0,
            attempts        integer NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            provisioned_at  timestamptz
        );
        CREATE INDEX tenant_provisions_server ON pgtenantproxy.tenant_provisions (server, state);
        CREATE TABLE pgtenantproxy.migration_log (
            id       bigserial PRIMARY KEY,
            at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            shop_id  bigint,
            action   text NOT NULL,
            step     text,
            status   text NOT NULL,
            detail   text,
            actor    text NOT NULL DEFAULT current_user
        );
        CREATE INDEX migration_log_shop ON pgtenantproxy.migration_log (shop_id, id);
        CREATE TABLE pgtenantproxy.tenant_credentials (
            shop_id              bigint PRIMARY KEY,
            server               text NOT NULL,
            host                 text NOT NULL,
            port                 integer NOT NULL,
            database_name        text NOT NULL,
            username             text NOT NULL,
            key_id               text NOT NULL,
            password_enc         bytea NOT NULL,
            dsn_enc              bytea NOT NULL,
            active               boolean NOT NULL DEFAULT true,
            created_at           timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now(),
            last_used_at         timestamptz,
            password_rotated_at  timestamptz
        );
        CREATE INDEX tenant_credentials_key ON pgtenantproxy.tenant_credentials (key_id);
        CREATE TABLE pgtenantproxy.tenant_migrations (
            version      integer PRIMARY KEY,
            name         text NOT NULL,
            checksum     text NOT NULL,
            recorded_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    ControlMigration(
        2,
        "routing: strategy set through the admin API, read overrides, change notifications",
        """
        CREATE TABLE pgtenantproxy.routing_state (
            singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            strategy    text NOT NULL CHECK (strategy IN
                            ('unified', 'tenant', 'percentage', 'shop-list', 'canary')),
            percentage  integer NOT NULL DEFAULT 0 CHECK (percentage BETWEEN 0 AND 100),
            shop_ids    bigint[] NOT NULL DEFAULT '{}',
            source      text NOT NULL,
            actor       text NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE TABLE IF NOT EXISTS pgtenantproxy.read_overrides (
            shop_id     bigint PRIMARY KEY,
            active      boolean NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            actor       text NOT NULL DEFAULT current_user
        );
        CREATE FUNCTION pgtenantproxy.notify_routing() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('pgtenantproxy_routing', TG_TABLE_NAME);
            RETURN NULL;
        END $$;
        CREATE TRIGGER routing_state_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.routing_state
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        CREATE TRIGGER read_overrides_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.read_overrides
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        """,
    ),
    ControlMigration(
        3,
        "migration: per-shop phases (fenced by version), backfill checkpoints",
        """
        CREATE TABLE pgtenantproxy.shop_phases (
            shop_id       bigint PRIMARY KEY,
            phase         text NOT NULL CHECK (phase IN ('unified', 'provisioned', 'backfilling',
                              'backfilled', 'mirroring', 'reads_on_tenant', 'tenant_primary', 'retired',
                              'degraded', 'failed')),
            version       bigint NOT NULL DEFAULT 1,
            resume_phase  text,
            reason        text,
            changed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            actor         text NOT NULL DEFAULT current_user
        );
        INSERT INTO pgtenantproxy.shop_phases (shop_id, phase, resume_phase, reason)
        SELECT shop_id,
               CASE state WHEN 'provisioned' THEN 'provisioned' WHEN 'failed' THEN 'failed'
                          ELSE 'unified' END,
               CASE state WHEN 'failed' THEN 'unified' END,
               CASE state WHEN 'failed' THEN coalesce(error, 'provisioning failed') END
        FROM pgtenantproxy.tenant_provisions WHERE state IN ('provisioned', 'failed');
        CREATE TRIGGER shop_phases_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.shop_phases
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        CREATE TABLE pgtenantproxy.backfill_progress (
            shop_id      bigint NOT NULL,
            tbl          text NOT NULL,
            status       text NOT NULL CHECK (status IN ('pending', 'copying', 'done')),
            rows_total   bigint,
            rows_copied  bigint NOT NULL DEFAULT 0,
            bytes_copied bigint NOT NULL DEFAULT 0,
            started_at   timestamptz,
            finished_at  timestamptz,
            updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (shop_id, tbl)
        );
        """,
    ),
    ControlMigration(
        4,
        "migration II: phase epochs, write fences, proxy instances, cutover conflicts, retirement archives",
        """
        CREATE SEQUENCE pgtenantproxy.phase_epoch AS bigint;
        ALTER TABLE pgtenantproxy.shop_phases
            ADD COLUMN epoch bigint NOT NULL DEFAULT nextval('pgtenantproxy.phase_epoch'),
            ADD COLUMN fence text CHECK (fence IN ('holding')),
            ADD COLUMN fence_until timestamptz;
        CREATE TABLE pgtenantproxy.proxy_instances (
            instance_id   text PRIMARY KEY,
            host          text NOT NULL,
            pid           integer NOT NULL,
            started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            heartbeat_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            epoch_seen    bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE pgtenantproxy.cutover_conflicts (
            shop_id      bigint NOT NULL,
            kind         text NOT NULL CHECK (kind IN ('global', 'cross_shop')),
            fingerprint  text NOT NULL,
            sample       text NOT NULL,
            count        bigint NOT NULL DEFAULT 0,
            first_seen   timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_seen    timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (shop_id, kind, fingerprint)
        );
        CREATE TABLE pgtenantproxy.retirement_archives (
            shop_id      bigint NOT NULL,
            tbl          text NOT NULL,
            path         text NOT NULL,
            format       text NOT NULL,
            rows         bigint NOT NULL,
            bytes        bigint NOT NULL,
            sha256       text NOT NULL,
            archived_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            deleted_at   timestamptz,
            restored_at  timestamptz,
            PRIMARY KEY (shop_id, tbl)
        );
        """,
    ),
    ControlMigration(
        5,
        "routing by key: id blocks, foreign-key proofs, the key directory, unplaceable statements",
        """
        CREATE TABLE pgtenantproxy.id_blocks (
            tbl          text NOT NULL,
            col          text NOT NULL,
            shop_id      bigint NOT NULL,
            first_id     bigint NOT NULL,
            last_id      bigint NOT NULL CHECK (last_id >= first_id),
            reserved_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (tbl, col, first_id)
        );
        CREATE INDEX id_blocks_shop ON pgtenantproxy.id_blocks (shop_id);
        CREATE TABLE pgtenantproxy.fk_proofs (
            child        text NOT NULL,
            name         text NOT NULL,
            child_cols   text[] NOT NULL,
            parent       text NOT NULL,
            parent_cols  text[] NOT NULL,
            consistent   boolean NOT NULL,
            cross_refs   bigint NOT NULL DEFAULT 0,
            samples      jsonb NOT NULL DEFAULT '[]',
            checked_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (child, name)
        );
        CREATE TABLE pgtenantproxy.key_directory (
            tbl      text NOT NULL,
            keys     int8range NOT NULL,
            shop_id  bigint NOT NULL
        );
        CREATE INDEX key_directory_keys ON pgtenantproxy.key_directory USING gist (keys);
        CREATE INDEX key_directory_shop ON pgtenantproxy.key_directory (tbl, shop_id);
        CREATE TABLE pgtenantproxy.key_directory_text (
            tbl      text NOT NULL,
            key      text NOT NULL,
            shop_id  bigint NOT NULL,
            PRIMARY KEY (tbl, key, shop_id)
        );
        CREATE INDEX key_directory_text_shop ON pgtenantproxy.key_directory_text (shop_id);
        ALTER TABLE pgtenantproxy.cutover_conflicts DROP CONSTRAINT cutover_conflicts_kind_check;
        ALTER TABLE pgtenantproxy.cutover_conflicts ADD CONSTRAINT cutover_conflicts_kind_check
            CHECK (kind IN ('global', 'cross_shop', 'unplaced'));
        CREATE TRIGGER id_blocks_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.id_blocks
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        CREATE TRIGGER fk_proofs_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.fk_proofs
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        """,
    ),
    ControlMigration(
        6,
        "federated reads: foreign tables of cut-over shops on unified; statements refused after cutover",
        """
        CREATE TABLE pgtenantproxy.federation (
            shop_id     bigint PRIMARY KEY,
            signature   text NOT NULL,
            tables      integer NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE TRIGGER federation_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON pgtenantproxy.federation
            FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.notify_routing();
        ALTER TABLE pgtenantproxy.cutover_conflicts DROP CONSTRAINT cutover_conflicts_kind_check;
        ALTER TABLE pgtenantproxy.cutover_conflicts ADD CONSTRAINT cutover_conflicts_kind_check
            CHECK (kind IN ('global', 'cross_shop', 'unplaced', 'refused'));
        """,
    ),
    ControlMigration(
        7,
        "reference tables: the change log of the global tables shops hold copies of, each copy's state",
        """
        CREATE TABLE pgtenantproxy.reference_changes (
            id          bigserial PRIMARY KEY,
            tbl         text NOT NULL,
            key         jsonb,
            changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX reference_changes_tbl ON pgtenantproxy.reference_changes (tbl, id);
        CREATE TABLE pgtenantproxy.reference_state (
            shop_id     bigint NOT NULL,
            tbl         text NOT NULL,
            applied_id  bigint NOT NULL,
            applied_at  timestamptz NOT NULL,
            rows        bigint NOT NULL,
            signature   text NOT NULL DEFAULT '',
            PRIMARY KEY (shop_id, tbl)
        );
        CREATE FUNCTION pgtenantproxy.capture_reference() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            old_key jsonb;
            new_key jsonb;
        BEGIN
            -- TG_ARGV: the table's label, its definition's signature, then its key columns in order.
            IF TG_LEVEL = 'STATEMENT' THEN
                INSERT INTO pgtenantproxy.reference_changes (tbl, key) VALUES (TG_ARGV[0], NULL);
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                SELECT jsonb_agg(r.v -> k.col ORDER BY k.ord) INTO old_key
                FROM (SELECT to_jsonb(OLD) AS v) AS r, unnest(TG_ARGV[2:]) WITH ORDINALITY AS k(col, ord);
                INSERT INTO pgtenantproxy.reference_changes (tbl, key) VALUES (TG_ARGV[0], old_key);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                SELECT jsonb_agg(r.v -> k.col ORDER BY k.ord) INTO new_key
                FROM (SELECT to_jsonb(NEW) AS v) AS r, unnest(TG_ARGV[2:]) WITH ORDINALITY AS k(col, ord);
                IF new_key IS DISTINCT FROM old_key THEN
                    INSERT INTO pgtenantproxy.reference_changes (tbl, key) VALUES (TG_ARGV[0], new_key);
                END IF;
            END IF;
            RETURN NULL;
        END $$;
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def control_schema_version(conn: asyncpg.Connection) -> int:
    """The version the database is at (0 when the control schema does not exist)."""
    exists = await conn.fetchval("SELECT to_regclass('pgtenantproxy.schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM pgtenantproxy.schema_version"))


async def ensure_control_schema(conn: asyncpg.Connection) -> int:
    """Create or upgrade the control schema; returns the version it is at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", CONTROL_LOCK, UPGRADE_LOCK_ID)
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS pgtenantproxy;"
            "REVOKE ALL ON SCHEMA pgtenantproxy FROM PUBLIC;"
            "CREATE TABLE IF NOT EXISTS pgtenantproxy.schema_version ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await control_schema_version(conn)
    if current > LATEST_VERSION:
        raise ControlSchemaError(
            f"the control schema is at version {current}, newer than this pgtenantproxy knows "
            f"({LATEST_VERSION}): upgrade pgtenantproxy"
        )
    for step in MIGRATIONS:
        if step.version <= current:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", CONTROL_LOCK, UPGRADE_LOCK_ID)
            if await control_schema_version(conn) >= step.version:
                continue  # another process applied it meanwhile
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO pgtenantproxy.schema_version (version, description) VALUES ($1, $2)",
                step.version,
                step.description,
            )
        logger.info("control schema upgraded to version %s: %s", step.version, step.description)
    return await control_schema_version(conn)


def shop_lock_key(shop_id: int) -> int:
    """The second int of a shop's advisory lock (folded into int4; collisions only serialise)."""
    folded = shop_id & 0xFFFFFFFF
    return folded - (1 << 32) if folded >= (1 << 31) else folded
