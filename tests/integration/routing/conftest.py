"""Routing tests: the tenancy bed with 40 provisioned shops whose rows are copied in."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.shopdata import copy_shops
from tests.fixtures.tenancy import TenancyBed

SHOPS = list(range(1, 41))

#: More rows, for every routed shop (the base fixture only fills shops 1-5).
MORE_ROWS = """
INSERT INTO customers (shop_id, name, phone, email)
SELECT s, 'Routed ' || s || '-' || i, '+33 1 ' || (200000 + s * 10 + i), 'r' || s || '-' || i || '@example.test'
FROM generate_series(1, 40) AS s, generate_series(1, 3) AS i;
INSERT INTO devices (shop_id, customer_id, serial_number)
SELECT c.shop_id, c.id, 'SN-' || c.id FROM customers c WHERE c.name LIKE 'Routed %';
INSERT INTO repairs (shop_id, customer_id, device_id, status, price)
SELECT d.shop_id, d.customer_id, d.id, 'received', 20 + d.id % 50
FROM devices d WHERE d.serial_number LIKE 'SN-%';
"""


@pytest.fixture(scope="package")
def routed_bed(tenancy_bed: TenancyBed) -> TenancyBed:
    tenancy_bed.reset()

    async def setup() -> None:
        svc = await tenancy_bed.service()
        try:
            async with svc.pool.acquire() as conn:
                await conn.execute(MORE_ROWS)
            outcomes = await svc.provision_many(SHOPS)
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
            await copy_shops(svc, SHOPS)
        finally:
            await svc.close()

    asyncio.run(setup())
    return tenancy_bed
