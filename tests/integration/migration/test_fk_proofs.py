"""Foreign-key proofs on the lifecycle bed: proved by ``verify`` (report, JSON, the control schema) and by
the cutover readiness check; a row referencing another shop's row makes its foreign key inconsistent,
with the row's key, and changes no verdict.

The bed's foreign keys between tenant tables: tellers and accounts -> branches, history -> accounts and
tellers, account_tags -> accounts, categories -> categories; ``branches.plan_id -> plans`` is left out
(``plans`` has no ``shop_id``: a global table). Verification runs on shop 1 in ``provisioned`` (its
tenant database empty: quick, and the verdict is "different" either way).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.keys import read_fk_proofs
from pgtenantproxy.migration.cutover import cutover_shops
from pgtenantproxy.migration.cutover_report import REFUSED
from pgtenantproxy.migration.readiness import readiness
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed

EXPECTED = {
    "public.account_tags.account_id -> public.accounts",
    "public.accounts.branch_id -> public.branches",
    "public.categories.parent_id -> public.categories",
    "public.history.account_id -> public.accounts",
    "public.history.teller_id -> public.tellers",
    "public.tellers.branch_id -> public.branches",
}
#: No rechecks: the empty tenant database differs anyway, only the proofs matter here.
FAST = {"verify_rechecks": 0}
#: A history row of shop 1 that references an account of shop 2 (not captured: no mirror runs here).
CROSS = """INSERT INTO history (shop_id, account_id, delta)
           SELECT 1, min(id), 42 FROM accounts WHERE shop_id = 2 RETURNING id, account_id"""


@pytest.fixture(scope="module")
def config(lbed: MirrorBed) -> Config:
    return lbed.config(migration=FAST)


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, config: Config) -> AsyncIterator[TenancyService]:
    async with await TenancyService.open(config, pool_size=4) as svc:
        yield svc


def labels(lines: list[str]) -> set[str]:
    return {line.removeprefix("foreign key ").split(":")[0] for line in lines}


async def test_verify_proves_every_foreign_key_between_tenant_tables(
    lbed: MirrorBed, tenancy: TenancyService
) -> None:
    report = await verify_shops(tenancy, [1])
    assert report.foreign_keys_error is None
    lines = report.foreign_key_lines()
    assert labels(lines) == EXPECTED
    assert "foreign key public.history.account_id -> public.accounts: 0 cross-shop references" in lines
    assert all(p.consistent and p.cross_refs == 0 for p in report.foreign_keys)
    data = report.as_dict()["foreign_keys"]
    assert {d["text"] for d in data} == set(lines) and all(d["samples"] == [] for d in data)
    assert {p.fk.name for p in await read_fk_proofs(tenancy.pool)} == {p.fk.name for p in report.foreign_keys}


async def test_a_row_referencing_another_shop_is_named_and_blocks_nothing(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, tmp_path: Path
) -> None:
    before = (await verify_shops(tenancy, [1])).status
    conn = await lbed.unified_admin()
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL pgtenantproxy.mirror_apply = on")
            row = await conn.fetchrow(CROSS)
    finally:
        await conn.close()
    assert row is not None
    try:
        report = await verify_shops(tenancy, [1])
        assert report.status == before  # the verdict is about the rows, not about the foreign keys
        [bad] = [p for p in report.foreign_keys if not p.consistent]
        assert (bad.fk.child, bad.fk.child_cols, bad.fk.parent) == ("public.history", ("account_id",),
                                                                    "public.accounts")
        assert bad.cross_refs == 1
        assert list(bad.samples) == [{"child_key": [row["id"]], "child_shop": 1, "parent_shop": 2,
                                      "references": [row["account_id"]]}]
        [line] = [x for x in report.foreign_key_lines() if "public.history.account_id" in x]
        assert line.startswith("foreign key public.history.account_id -> public.accounts: 1 cross-shop "
                               "reference (it pins nothing), e.g. public.history ")
        assert f"[{row['id']}] (shop 1) -> public.accounts [{row['account_id']}] (shop 2)" in line

        ready = (await readiness(tenancy.pool, [1, 2], tenancy=config.tenancy))
        assert all(r.ready for r in ready.values())  # reported, but the cutover is not refused for it
        assert [p.fk.child for p in ready[1].cross_shop_foreign_keys] == ["public.history"]
        assert any(line == x for x in ready[2].foreign_key_lines())

        # a cutover run proves them too and lists them per shop (shop 1 is refused: it is not cut over
        # for its phase, provisioned, never for a foreign key)
        refused = (await cutover_shops(tenancy, [1])).shops[0]
        assert refused.status == REFUSED and "phase provisioned" in (refused.detail or "")
        assert refused.extra["cross_shop_foreign_keys"] == [line]

        printed = await asyncio.to_thread(_cli_verify_json, lbed, tmp_path)
        [listed] = [fk for fk in printed["foreign_keys"] if not fk["consistent"]]
        assert listed["child"] == "public.history" and listed["cross_shop_references"] == 1
        assert listed["samples"][0]["child_key"] == [row["id"]]
    finally:
        conn = await lbed.unified_admin()
        try:
            await conn.execute("SET pgtenantproxy.mirror_apply = on")
            await conn.execute("DELETE FROM history WHERE id = $1", row["id"])
        finally:
            await conn.close()
    again = await verify_shops(tenancy, [1])
    assert all(p.consistent for p in again.foreign_keys)


def _cli_verify_json(lbed: MirrorBed, tmp_path: Path) -> dict[str, object]:
    path = lbed.write_config(tmp_path / "config.toml", migration=FAST)
    result = subprocess.run([sys.executable, "-m", "pgtenantproxy", "verify", "--shop", "1", "--json",
                             "--config", str(path)], capture_output=True, text=True,
                            env={**os.environ, **lbed.environ()}, check=False)
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data
