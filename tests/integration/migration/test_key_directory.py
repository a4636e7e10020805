"""The key directory written by a real retirement and removed by the restore (the retirement test bed).

The bed of ``test_retire.py`` (seed rows plus history, account_tags and child
categories), with more history and categories rows written for shops 1-4 in a
shuffled order, so each shop's keys come in islands between other shops' keys.
Shops 1 and 2 are backfilled and put in ``tenant_primary``; shop 2 is retired,
then shop 1: every key each had must be covered by exactly one directory row,
of its own shop, and no key left in unified by any; each restore removes its
shop's rows again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pgtenantproxy.config import Config
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.retire_report import RETIRED
from pgtenantproxy.migration.reverse_link import remove_reverse_capture
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed
from tests.integration.migration.test_retire import EXTRA_ROWS, primary

SHUFFLED = """
SET pgtenantproxy.mirror_apply = on;
SELECT setseed(0.42);
INSERT INTO history (shop_id, account_id, delta)
    SELECT a.shop_id, a.id, 1 FROM accounts a, generate_series(1, 3) WHERE a.shop_id <= 4 ORDER BY random();
INSERT INTO categories (shop_id, name)
    SELECT s, 'shuffled' FROM generate_series(1, 4) s, generate_series(1, 10) ORDER BY random();
RESET pgtenantproxy.mirror_apply;
"""
#: The tables with one integer key column (account_tags has a composite key: not in the directory).
KEYED = ("branches", "tellers", "accounts", "history", "categories")
LOOKUP = "SELECT array_agg(shop_id) FROM pgtenantproxy.key_directory WHERE tbl = $1 AND keys @> $2::int8"


@pytest.fixture(scope="module")
def config(lbed: MirrorBed, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return lbed.config(migration={"archive_dir": str(tmp_path_factory.mktemp("archive"))})


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, config: Config) -> AsyncIterator[TenancyService]:
    conn = await lbed.unified_admin()
    try:
        await conn.execute(EXTRA_ROWS)
        await conn.execute(SHUFFLED)
    finally:
        await conn.close()
    svc = await TenancyService.open(config, pool_size=6)
    try:
        await primary(lbed, svc, (1, 2))
        yield svc
    finally:
        await svc.close()
        for shop in (1, 2):
            tenant = await lbed.shop_admin(shop)
            try:
                await remove_reverse_capture(tenant)
            finally:
                await tenant.close()


async def keys_of(lbed: MirrorBed, shop: int | None) -> dict[str, list[int]]:
    """Each keyed table's ids (of ``shop``; None: of every shop)."""
    conn = await lbed.unified_admin()
    try:
        query = "SELECT id FROM {} WHERE $1::int IS NULL OR shop_id = $1 ORDER BY id"
        return {t: [r[0] for r in await conn.fetch(query.format(t), shop)] for t in KEYED}
    finally:
        await conn.close()


async def test_retirement_covers_every_key_of_the_shop_with_its_own_islands(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    former = {shop: await keys_of(lbed, shop) for shop in (1, 2)}
    assert all(former[2].values())
    report = await retire_shops(tenancy, [2], config=config)
    [shop] = report.shops
    assert shop.status == RETIRED, shop.as_dict()
    written = shop.key_directory
    assert written is not None and written["not_routed_by_key"] == ["public.account_tags"]
    assert set(written["ranges"]) == {f"public.{t}" for t in KEYED} and written["text_keys"] == {}
    assert written["ranges"]["public.history"] > 5  # shuffled: islands, not one range
    assert written["ranges"]["public.history"] < len(former[2]["history"])
    await assert_covered(lbed, former, [2])
    assert await count(lbed, "key_directory WHERE shop_id = 2") == sum(written["ranges"].values())
    assert await count(lbed, "key_directory_text") == 0

    # shop 1 next: its islands stop at shop 2's ranges, so each key still has one shop
    assert (await retire_shops(tenancy, [1], config=config)).ok
    await assert_covered(lbed, former, [1, 2])

    await restore_shop(tenancy, 2, config=config)
    assert await keys_of(lbed, 2) == former[2]
    assert await count(lbed, "key_directory WHERE shop_id = 2") == 0
    await assert_covered(lbed, former, [1])
    await restore_shop(tenancy, 1, config=config)
    assert await count(lbed, "key_directory") == 0


async def assert_covered(
    lbed: MirrorBed, former: dict[int, dict[str, list[int]]], retired: list[int]
) -> None:
    """Every former key of a retired shop is covered by exactly one directory row, of its shop; no key
    still in unified is covered at all."""
    conn = await lbed.unified_admin()
    try:
        for table in KEYED:
            label = f"public.{table}"
            for shop in retired:
                keys = former[shop][table]
                covering = await conn.fetch(
                    "SELECT k, array_agg(d.shop_id) AS shops FROM unnest($2::int8[]) k LEFT JOIN"
                    " pgtenantproxy.key_directory d ON d.tbl = $1 AND d.keys @> k GROUP BY k", label, keys)
                assert len(covering) == len(keys) and all(r["shops"] == [shop] for r in covering), table
                assert await conn.fetchval(LOOKUP, label, keys[0]) == [shop]
            left = await conn.fetchval(
                f"SELECT count(*) FROM {table} t JOIN pgtenantproxy.key_directory d"
                " ON d.tbl = $1 AND d.keys @> t.id::int8", label)
            assert left == 0, table
    finally:
        await conn.close()


async def count(lbed: MirrorBed, what: str) -> int:
    conn = await lbed.unified_admin()
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM pgtenantproxy.{what}"))
    finally:
        await conn.close()


async def test_a_dry_run_writes_no_directory_row(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    report = await retire_shops(tenancy, [1], config=config, dry_run=True)
    assert report.ok and report.shops[0].key_directory is None
    assert await count(lbed, "key_directory") == 0
