"""Issue 14's acceptance bed: the driver tier's bed, the answers before, every shop migrated, some retired.

One bed for the package (:func:`tests.integration.drivers.bed.make_bed`:
unified with ``handyshop`` and the unmigrated ``handyshop_direct``, a tenant
server, the proxy in a thread; the driver tier's load is not started). Then,
in this order:

1. every shape (:mod:`.shapes`) through the proxy, all shops still on unified,
   with psycopg 3 and asyncpg: the answers kept in memory (and the same on
   ``handyshop_direct``, to check the bed);
2. every shop to ``tenant_primary``, shops 1, 3, 6 ``retired``
   (:mod:`.migration`), the proxy's catalog let settle;
3. a second proxy started on the same databases with ``[federation]
   max_shops_per_query`` = :data:`~.shapes.NARROW_MAX_SHOPS` (no mirroring),
   for the fan-out shapes (:data:`~.shapes.FANOUT_SHAPES`);
4. the tests run the shapes again (``test_query_shapes.py``).

Reports and the proxy's log are in the bed's directory (``.../federation0/``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pgtenantproxy.config import parse_config
from pgtenantproxy.walkthrough.cluster import APP_DB
from tests.fixtures.app import AppThread
from tests.integration.drivers.bed import DriverBed, Target, make_bed
from tests.integration.federation.migration import Migration, migrate_and_retire
from tests.integration.federation.runner import Answers, run_asyncpg, run_psycopg
from tests.integration.federation.shapes import FANOUT_SHAPES, NARROW_MAX_SHOPS, SHAPES, Shape


@dataclass
class FederationBed:
    bed: DriverBed
    #: driver -> shape -> answer, through the proxy before the migration.
    before: dict[str, Answers]
    #: driver -> shape -> answer, directly on the unmigrated copy.
    direct: dict[str, Answers]
    migration: Migration
    #: A second proxy on the same databases, ``[federation] max_shops_per_query`` = NARROW_MAX_SHOPS.
    narrow: Target


def run_all(where: Target, shapes: tuple[Shape, ...] = SHAPES + FANOUT_SHAPES) -> dict[str, Answers]:
    return {"psycopg": run_psycopg(where.conninfo(), shapes),
            "asyncpg": run_asyncpg(where.asyncpg_kwargs(), shapes)}


def start_narrow_proxy(bed: DriverBed) -> AppThread:
    """The bed's config with a low fan-out limit; no mirroring (the bed's proxy does it)."""
    data = {**bed.config_data(), "federation": {"max_shops_per_query": NARROW_MAX_SHOPS}}
    return AppThread(parse_config(data, environ={})).start()


@pytest.fixture(scope="package")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationBed]:
    started = time.monotonic()
    bed = make_bed(tmp_path_factory.mktemp("federation"))
    narrow: AppThread | None = None
    try:
        built = time.monotonic()
        print(f"\nfederation bed in {bed.workdir}: built in {built - started:.1f} s", flush=True)
        before = run_all(bed.proxied)
        direct = run_all(bed.direct)
        print(f"answers before recorded ({len(SHAPES) + len(FANOUT_SHAPES)} shapes x {len(before)} drivers) "
              f"in {time.monotonic() - built:.1f} s; migrating:", flush=True)
        migration = migrate_and_retire(bed)
        print(migration.log(), flush=True)
        narrow = start_narrow_proxy(bed)
        target = Target("narrow", "127.0.0.1", narrow.port, APP_DB, password=bed.sandbox.app_password)
        yield FederationBed(bed, before, direct, migration, target)
    finally:
        try:
            if narrow is not None:
                narrow.stop()
        finally:
            bed.destroy()
