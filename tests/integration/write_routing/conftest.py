"""Write routing tests: the tenancy bed with a few shops copied in, some forced to ``tenant_primary``.

:class:`WriteBed` wraps the shared :class:`~tests.fixtures.tenancy.TenancyBed`
with direct connections to unified and to each shop's own database (as the
tenant server's admin), so tests can check where a row really landed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pgtenantproxy.lifecycle.phases import MIRRORING, READS_ON_TENANT, TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase, set_fence
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.shopdata import copy_shops
from tests.fixtures.tenancy import DATABASE, TenancyBed

#: 1, 3: tenant_primary; 2, 6: mirroring (the recorder watches them); 4, 5: reads_on_tenant (holds).
PRIMARY = (1, 3)
PHASES = {1: TENANT_PRIMARY, 2: MIRRORING, 3: TENANT_PRIMARY, 4: READS_ON_TENANT, 5: READS_ON_TENANT,
          6: MIRRORING, 7: TENANT_PRIMARY}


@dataclass
class WriteBed:
    bed: TenancyBed
    tenant_dsns: dict[int, str] = field(default_factory=dict)

    @property
    def unified_dsn(self) -> str:
        u = self.bed.unified
        return f"host=127.0.0.1 port={u.port} user=postgres password={u.password} dbname={DATABASE}"

    def proxy_dsn(self, proxy: ProxyThread) -> str:
        u = self.bed.unified
        return f"host=127.0.0.1 port={proxy.port} user=postgres password={u.password} dbname={DATABASE}"

    def proxy(self, **routing: Any) -> ProxyThread:
        config = self.bed.config(
            proxy={"listen": "127.0.0.1:0", "shutdown_timeout_ms": 2000},
            routing={"catalog_refresh_ms": 200, **routing},
        )
        return ProxyThread(config, routing=True).start()

    def on_unified(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.unified_dsn, autocommit=True) as conn:
            return conn.execute(sql, args or None).fetchall()

    def on_tenant(self, shop: int, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.tenant_dsns[shop], autocommit=True) as conn:
            return conn.execute(sql, args or None).fetchall()

    def fence(self, shop: int, hold_s: float | None) -> None:
        asyncio.run(self._control(lambda conn: set_fence(conn, shop, hold_s=hold_s)))

    def phase(self, shop: int, phase: str) -> None:
        asyncio.run(self._control(lambda conn: force_phase(conn, shop, phase, reason="write routing test")))

    async def _control(self, action: Any) -> None:
        svc = await self.bed.service()
        try:
            async with svc.pool.acquire() as conn:
                await action(conn)
        finally:
            await svc.close()


@pytest.fixture(scope="package")
def write_bed(tenancy_bed: TenancyBed) -> WriteBed:
    tenancy_bed.reset()
    wb = WriteBed(tenancy_bed)

    async def setup() -> None:
        svc = await tenancy_bed.service()
        try:
            outcomes = await svc.provision_many(list(PHASES))
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
            await copy_shops(svc, list(PHASES))
            async with svc.pool.acquire() as conn:
                for shop, phase in PHASES.items():
                    await force_phase(conn, shop, phase, reason="write routing test bed")
            for shop in PHASES:
                creds = await svc.credentials(shop)
                admin = tenancy_bed.tenant_of(creds.server)
                wb.tenant_dsns[shop] = (f"host=127.0.0.1 port={creds.port} user={admin.superuser} "
                                        f"password={admin.password} dbname={creds.database}")
        finally:
            await svc.close()

    asyncio.run(setup())
    return wb


@pytest.fixture(scope="package")
def proxy(write_bed: WriteBed) -> Iterator[ProxyThread]:
    p = write_bed.proxy(write_hold_timeout_ms=60000)
    yield p
    p.stop()
