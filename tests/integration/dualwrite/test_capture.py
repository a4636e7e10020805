"""Write capture on unified: what is captured, what is refused, enable and disable."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess

import asyncpg
import pytest

from pgtenantproxy.config import parse_config
from pgtenantproxy.dualwrite.capture import TRIGGERS, enable_capture, installed_tables
from pgtenantproxy.dualwrite.errors import CaptureError
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.sqltext import QualifiedName
from tests.integration.dualwrite.bed import ENV, TABLES, MirrorBed, differences


async def outbox(conn: asyncpg.Connection, shop_id: int, after: int) -> list[tuple[str, list[object], str]]:
    """The shop's entries with an id above ``after``, oldest first."""
    rows = await conn.fetch(
        "SELECT tbl, pk::text AS pk, op::text AS op FROM pgtenantproxy.outbox WHERE shop_id = $1 AND id > $2"
        " ORDER BY id",
        shop_id, after,
    )
    return [(r["tbl"], json.loads(r["pk"]), r["op"]) for r in rows]


async def mark(bed: MirrorBed) -> int:
    """The last outbox id handed out so far."""
    conn = await bed.unified_admin()
    try:
        return int(await conn.fetchval("SELECT last_value FROM pgtenantproxy.outbox_id_seq"))
    finally:
        await conn.close()


async def test_every_tenant_table_is_captured_and_only_those(bed: MirrorBed) -> None:
    conn = await bed.unified_admin()
    try:
        captured = {t.label for t in await installed_tables(conn)}
        triggers = await conn.fetch(
            "SELECT tgrelid::regclass::text AS t, count(*) AS n FROM pg_trigger"
            " WHERE tgname = ANY($1::text[]) GROUP BY 1",
            list(TRIGGERS),
        )
    finally:
        await conn.close()
    assert captured == {f"public.{t}" for t in TABLES}
    assert {r["t"]: r["n"] for r in triggers} == {t: len(TRIGGERS) for t in TABLES}  # not the global "plans"


async def test_a_committed_write_is_captured_in_its_own_transaction_with_key_op_and_txid(
    bed: MirrorBed,
) -> None:
    start = await mark(bed)
    app = await bed.app()
    try:
        async with app.transaction():
            txid = await app.fetchval("SELECT pg_current_xact_id()::text")
            account = await app.fetchval(
                "INSERT INTO accounts (shop_id, branch_id, note) VALUES (3, 3, 'new') RETURNING id"
            )
            await app.execute(
                "INSERT INTO account_tags (shop_id, account_id, tag) VALUES (3, $1, 'x')", account
            )
            await app.execute("UPDATE accounts SET balance = 7 WHERE id = $1", account)
            await app.execute("DELETE FROM account_tags WHERE account_id = $1", account)
        admin = await bed.unified_admin()
        try:
            entries = await outbox(admin, 3, start)
            txids = await admin.fetch(
                "SELECT DISTINCT txid::text FROM pgtenantproxy.outbox WHERE shop_id = 3 AND id > $1", start
            )
        finally:
            await admin.close()
    finally:
        await app.close()
    assert entries == [
        ("public.accounts", [account], "I"),
        ("public.account_tags", [account, "x"], "I"),
        ("public.accounts", [account], "U"),
        ("public.account_tags", [account, "x"], "D"),
    ]
    assert [r[0] for r in txids] == [txid]


async def test_a_rolled_back_write_is_never_captured(bed: MirrorBed) -> None:
    start = await mark(bed)
    app = await bed.app()
    try:
        tx = app.transaction()
        await tx.start()
        await app.execute("INSERT INTO accounts (shop_id, branch_id, note) VALUES (4, 4, 'rolled back')")
        await tx.rollback()
        async with app.transaction():  # a savepoint rolled back inside a committed transaction
            await app.execute("UPDATE branches SET name = 'kept' WHERE id = 4")
            try:
                async with app.transaction():
                    await app.execute("UPDATE tellers SET balance = -1 WHERE shop_id = 4")
                    raise RuntimeError("roll the savepoint back")
            except RuntimeError:
                pass
    finally:
        await app.close()
    admin = await bed.unified_admin()
    try:
        assert await outbox(admin, 4, start) == [("public.branches", [4], "U")]
    finally:
        await admin.close()


async def test_the_application_role_cannot_read_the_outbox(bed: MirrorBed) -> None:
    app = await bed.app()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetch("SELECT * FROM pgtenantproxy.outbox")
    finally:
        await app.close()


async def test_changing_the_tenant_column_of_a_row_is_rejected(bed: MirrorBed) -> None:
    app = await bed.app()
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
            await app.execute("UPDATE accounts SET shop_id = 6 WHERE id = 101")
        assert caught.value.sqlstate == "23000"
        message = "changing column shop_id of an existing row of public.accounts is not allowed"
        assert message in str(caught.value)
        assert await app.fetchval("SELECT shop_id FROM accounts WHERE id = 101") == 3
    finally:
        await app.close()


async def test_a_primary_key_change_syncs_the_old_key_away(bed: MirrorBed, mirror: DualWriteService) -> None:
    app = await bed.app()
    try:
        await app.execute("UPDATE account_tags SET tag = 'renamed' WHERE account_id = 130 AND tag = 'seed'")
        await app.execute("INSERT INTO account_tags (shop_id, account_id, tag) VALUES (3, 130, 'old')")
        await app.execute("UPDATE account_tags SET tag = 'new' WHERE account_id = 130 AND tag = 'old'")
    finally:
        await app.close()
    assert await mirror.wait_drained(timeout_s=30)
    tenant = await bed.shop_admin(3)
    try:
        tags = await tenant.fetch("SELECT tag FROM account_tags WHERE account_id = 130 ORDER BY tag")
    finally:
        await tenant.close()
    assert [r["tag"] for r in tags] == ["new"]
    assert await differences(bed, (3,)) == {}


async def test_enable_picks_up_a_new_table_with_a_wide_key_and_skips_rows_of_no_shop(bed: MirrorBed) -> None:
    admin = await bed.unified_admin()
    svc = await DualWriteService.open(bed.config(), run_worker=False)
    try:
        await admin.execute(
            "CREATE TABLE wide_keys (shop_id integer, a integer, b text, c date, PRIMARY KEY (a, b, c))"
        )
        await svc.enable()
        start = await mark(bed)
        await admin.execute(
            "INSERT INTO wide_keys VALUES (8, 1, 'x', '2024-01-02'), (8, 2, 'y', '2024-01-03'),"
            " (NULL, 3, 'global', '2024-01-04')"
        )
        await admin.execute("UPDATE wide_keys SET c = '2025-01-01' WHERE a = 2")
        assert await outbox(admin, 8, start) == [
            ("public.wide_keys", [1, "x", "2024-01-02"], "I"),
            ("public.wide_keys", [2, "y", "2024-01-03"], "I"),
            ("public.wide_keys", [2, "y", "2024-01-03"], "D"),  # the old key of a key change (row trigger)
            ("public.wide_keys", [2, "y", "2025-01-01"], "U"),  # the new key (statement trigger)
        ]
        assert await admin.fetchval("SELECT count(*) FROM pgtenantproxy.outbox WHERE id > $1", start) == 4
    finally:
        await admin.execute("DELETE FROM pgtenantproxy.outbox WHERE tbl = 'public.wide_keys'")
        await admin.execute("DROP TABLE wide_keys")
        await svc.enable()
        await svc.close()
        await admin.close()


async def test_truncate_of_a_captured_table_is_refused(bed: MirrorBed) -> None:
    admin = await bed.unified_admin()
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match=r"TRUNCATE of public\.account_tags"):
            await admin.execute("TRUNCATE account_tags")
    finally:
        await admin.close()


async def test_a_table_without_primary_key_is_refused_by_name_and_nothing_changes(bed: MirrorBed) -> None:
    admin = await bed.unified_admin()
    try:
        await admin.execute("CREATE TABLE audit_notes (shop_id integer NOT NULL, note text)")
        before = await admin.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = ANY($1::text[])",
                                      list(TRIGGERS))
        svc = await DualWriteService.open(bed.config(), run_worker=False)
        try:
            with pytest.raises(CaptureError, match=r"public\.audit_notes: has no primary key"):
                await svc.enable()
        finally:
            await svc.close()
        tables = [QualifiedName("public", "accounts"), QualifiedName("public", "plans")]
        with pytest.raises(CaptureError, match=r"public\.plans: has no column 'shop_id'"):
            await enable_capture(admin, tables, "shop_id")
        after = await admin.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = ANY($1::text[])",
                                     list(TRIGGERS))
        assert after == before
    finally:
        await admin.execute("DROP TABLE audit_notes")
        await admin.close()


async def test_the_mirror_apply_setting_bypasses_capture(bed: MirrorBed) -> None:
    start = await mark(bed)
    admin = await bed.unified_admin()
    try:
        async with admin.transaction():
            await admin.execute("SET LOCAL pgtenantproxy.mirror_apply = 'on'")
            await admin.execute("UPDATE branches SET name = name WHERE id = 5")
        assert await outbox(admin, 5, start) == []
        await admin.execute("UPDATE branches SET name = name WHERE id = 5")
        assert await outbox(admin, 5, start) == [("public.branches", [5], "U")]
    finally:
        await admin.close()


async def test_disable_stops_capture_and_keeps_the_app_running_then_enable_from_the_seed_variable(
    bed: MirrorBed, mirror: DualWriteService
) -> None:
    await mirror.disable()
    start = await mark(bed)
    app = await bed.app()
    try:
        await app.execute("UPDATE accounts SET note = 'after disable' WHERE id = 251")  # shop 6
    finally:
        await app.close()
    admin = await bed.unified_admin()
    try:
        tx = admin.transaction()  # TRUNCATE is allowed again (rolled back: the rows stay)
        await tx.start()
        await admin.execute("TRUNCATE account_tags")
        await tx.rollback()
        assert await outbox(admin, 6, start) == []
        assert await installed_tables(admin) == []
    finally:
        await admin.close()
    assert await mirror.wait_drained(timeout_s=30)  # what was queued before still drains
    data = bed.config_data()
    seeded = parse_config(data, environ={"ENABLE_DUAL_WRITE": "true"})
    assert seeded.dual_write.enabled
    svc = await DualWriteService.open(seeded, run_worker=False)
    try:
        async with svc.tenancy.pool.acquire() as conn:
            assert {t.label for t in await installed_tables(conn)} == {f"public.{t}" for t in TABLES}
    finally:
        await svc.close()


def run_cli(
    bed: MirrorBed, config: Path, *args: str, env: dict[str, str] | None = None
) -> CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgtenantproxy", *args, "--config", str(config)],
        env=env if env is not None else {**os.environ, **bed.environ(), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120, check=False,
    )


async def test_the_cli_enables_reports_and_disables_capture(bed: MirrorBed, tmp_path: Path) -> None:
    config = bed.write_config(tmp_path / "config.toml")
    enabled = await asyncio.to_thread(run_cli, bed, config, "dual-write", "enable")
    assert enabled.returncode == 0, enabled.stderr
    assert "write capture enabled on 6 tables" in enabled.stdout
    status = await asyncio.to_thread(run_cli, bed, config, "dual-write", "status")
    assert status.returncode == 0, status.stderr
    assert "capture: on (6 tables)" in status.stdout
    disabled = await asyncio.to_thread(run_cli, bed, config, "dual-write", "disable")
    assert disabled.returncode == 0, disabled.stderr
    assert "write capture removed from 6 tables" in disabled.stdout
    status = await asyncio.to_thread(run_cli, bed, config, "dual-write", "status")
    assert "capture: off" in status.stdout
    assert (await asyncio.to_thread(run_cli, bed, config, "dual-write", "enable")).returncode == 0
    no_key = {k: v for k, v in {**os.environ, **bed.environ()}.items() if k != ENV["key"]}
    refused = await asyncio.to_thread(run_cli, bed, config, "mirror", env=no_key)
    assert refused.returncode == 2
    assert ENV["key"] in refused.stderr and bed.key_hex not in refused.stderr + refused.stdout
