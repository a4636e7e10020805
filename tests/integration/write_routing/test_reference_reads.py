"""Reads with reference tables through a real proxy: on the shop's own database while its copies are current.

``device_models`` is a reference table here: every shop database holds a copy
made by the migration's own :class:`~pgtenantproxy.migration.reference.ReferenceSync`.
Where a read ran is told by a marker: each shop's copy of one row is changed on
its database directly (``copy of shop N``), so a read answered from the copy says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgtenantproxy.config import Config
from pgtenantproxy.migration.federation import federate_shop, unfederate_shop
from pgtenantproxy.migration.reference import ReferenceSync
from tests.fixtures.proxy import ProxyThread
from tests.integration.write_routing.conftest import WriteBed

SHOPS = (1, 3, 7)  # tenant_primary in the bed
REFERENCE = {"table": "public.device_models", "columns": ["id", "brand_id", "model"]}
JOIN = "SELECT m.model FROM customers c JOIN device_models m ON m.id = 1 WHERE c.shop_id = %s LIMIT 1"


def _config(write_bed: WriteBed, *references: dict[str, Any]) -> Config:
    return write_bed.bed.config(
        proxy={"listen": "127.0.0.1:0", "shutdown_timeout_ms": 2000},
        routing={"catalog_refresh_ms": 100},
        dual_write={"max_lag_ms": 500},
        tenancy={"reference_tables": list(references)},
    )


def _sync(write_bed: WriteBed, config: Config) -> None:
    async def run() -> None:
        svc = await write_bed.bed.service()
        try:
            shops = list(SHOPS) if config.tenancy.reference_tables else None
            report = await ReferenceSync(svc, lambda: config).run_once(shops)
            assert not report.table_errors, report.table_errors
        finally:
            await svc.close()

    asyncio.run(run())


def _federation(write_bed: WriteBed, action: Any) -> None:
    """A read the copies cannot serve is federated: the shops' foreign tables (as after a cutover)."""
    async def run() -> None:
        svc = await write_bed.bed.service()
        try:
            for shop in SHOPS:
                await action(svc, shop)
        finally:
            await svc.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def referenced(write_bed: WriteBed) -> Iterator[ProxyThread]:
    config = _config(write_bed, REFERENCE)
    _sync(write_bed, config)
    _mark(write_bed)
    _federation(write_bed, federate_shop)
    proxy = ProxyThread(config, routing=True).start()
    try:
        snapshot = lambda: _runtime(proxy).catalog.snapshot  # noqa: E731
        _until(lambda: set(SHOPS) <= snapshot().reference.current & snapshot().federation.ready)
        yield proxy
    finally:
        proxy.stop()
        _sync(write_bed, _config(write_bed))  # no reference tables: copies and capture removed
        _federation(write_bed, unfederate_shop)


def _runtime(proxy: ProxyThread) -> Any:
    assert proxy.runtime is not None
    return proxy.runtime


def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _mark(write_bed: WriteBed) -> None:
    for shop in SHOPS:
        write_bed.on_tenant(shop, "UPDATE device_models SET model = %s WHERE id = 1 RETURNING id",
                            _marker(shop))


def _marker(shop: int) -> str:
    return f"copy of shop {shop}"


def _model(write_bed: WriteBed, proxy: ProxyThread, shop: int) -> str:
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        row = conn.execute(JOIN, (shop,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_shops_join_with_a_reference_table_runs_on_its_database(write_bed: WriteBed,
                                                                 referenced: ProxyThread) -> None:
    for shop in (1, 3):  # (shop 7 has no customers in the bed)
        assert _model(write_bed, referenced, shop) == _marker(shop)
    assert write_bed.on_tenant(3, "SELECT count(*) FROM device_models") == write_bed.on_unified(
        "SELECT count(*) FROM device_models")


def test_a_lagging_copy_is_not_read(write_bed: WriteBed, referenced: ProxyThread) -> None:
    """A change on unified not yet in the copies: past max_lag_ms the read goes to unified (federated);
    after the sync, back to the shop's database with the new value."""
    write_bed.on_unified("UPDATE device_models SET model = model || ' v2' WHERE id = 2 RETURNING id")
    try:
        _until(lambda: 3 not in _runtime(referenced).catalog.snapshot.reference.current)
        assert _model(write_bed, referenced, 3) != _marker(3)  # unified's row, federated
        _sync(write_bed, _config(write_bed, REFERENCE))
        _until(lambda: 3 in _runtime(referenced).catalog.snapshot.reference.current)
        assert _model(write_bed, referenced, 3) == _marker(3)
        assert write_bed.on_tenant(3, "SELECT model FROM device_models WHERE id = 2")[0][0].endswith(" v2")
    finally:
        write_bed.on_unified("UPDATE device_models SET model = left(model, -3) WHERE id = 2 RETURNING id")
        _sync(write_bed, _config(write_bed, REFERENCE))


def test_a_session_reads_its_own_write_of_a_reference_table(write_bed: WriteBed,
                                                            referenced: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(referenced), autocommit=True) as conn:
        conn.execute("UPDATE device_models SET model = model WHERE id = 2")
        row = conn.execute(JOIN, (3,)).fetchone()
    assert row is not None and row[0] != _marker(3)  # not the copy: it may not hold the write yet
    _sync(write_bed, _config(write_bed, REFERENCE))


def test_inside_a_shops_transaction_a_reference_read_stays_there(write_bed: WriteBed,
                                                                 referenced: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(referenced)) as conn:
        conn.execute("SELECT count(*) FROM customers WHERE shop_id = 7")
        model = conn.execute("SELECT model FROM device_models WHERE id = 1").fetchone()
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("UPDATE device_models SET model = model WHERE id = 1")  # copies are read-only
        conn.rollback()
    assert model == (_marker(7),)
