"""Through the whole proxy with strategy ``tenant``: a session reads its own writes at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fixtures.app import TEST_LISTEN, AppThread
from tests.integration.dualwrite.bed import MirrorBed


@pytest.fixture(scope="module")
def app(bed: MirrorBed) -> Iterator[AppThread]:
    config = bed.config(routing={"strategy": "tenant"}, **TEST_LISTEN)
    with AppThread(config, mirror=True) as thread:
        yield thread


def tenant_reads(app: AppThread) -> int:
    assert app.app is not None and app.app.runtime is not None
    decisions = app.run(lambda: dict(app.app.runtime.dispatcher.stats.decisions))  # type: ignore[union-attr]
    return sum(n for (target, _), n in decisions.items() if target == "tenant")


async def test_a_read_right_after_a_write_sees_it_and_later_reads_go_to_the_tenant(
    bed: MirrorBed, app: AppThread
) -> None:
    conn = await bed.app(port=app.port)
    try:
        read = "SELECT note FROM accounts WHERE id = $1 AND shop_id = 12"
        for i in range(20):
            note = f"write {i}"
            await conn.execute("UPDATE accounts SET note = $1 WHERE id = 555 AND shop_id = 12", note)
            assert await conn.fetchval(read, 555) == note  # unified until the mirror applied it
        before = await asyncio.to_thread(tenant_reads, app)
        for _ in range(100):  # once applied, the same session's reads are served by the tenant
            assert await conn.fetchval(read, 555) == "write 19"
            if await asyncio.to_thread(tenant_reads, app) > before:
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(tenant_reads, app) > before
        async with conn.transaction():  # a write inside a block: the marker is taken at COMMIT
            await conn.execute("UPDATE accounts SET note = 'in a block' WHERE id = 555 AND shop_id = 12")
        assert await conn.fetchval(read, 555) == "in a block"
    finally:
        await conn.close()
