"""Observability and control tests: the tenancy bed with a few provisioned shops, the whole app running.

The package fixture ``obs_bed`` resets the session's tenancy bed and provisions
:data:`SHOPS` with their rows copied in (what the routing tests do, with fewer
shops: these tests need traffic on both sides, not coverage of shops). The
admin token lives in a test-only environment variable, named by the configs
built here, the way production reads it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from pgtenantproxy.config import Config
from tests.fixtures.app import TEST_LISTEN, AppThread
from tests.fixtures.shopdata import copy_shops
from tests.fixtures.tenancy import TenancyBed

SHOPS = list(range(1, 9))
TOKEN_ENV = "PGTP_TEST_ADMIN_TOKENS"
TOKEN = secrets.token_urlsafe(24)
OTHER_TOKEN = secrets.token_urlsafe(24)


def obs_config(bed: TenancyBed, **sections: dict[str, Any]) -> Config:
    merged = {name: dict(values) for name, values in TEST_LISTEN.items()}
    merged["admin"]["token_env"] = TOKEN_ENV
    merged["routing"] = {"catalog_refresh_ms": 200}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return bed.config(**merged)


@pytest.fixture(scope="package")
def obs_bed(tenancy_bed: TenancyBed) -> TenancyBed:
    tenancy_bed.reset()
    os.environ[TOKEN_ENV] = f"ops:{TOKEN},ci:{OTHER_TOKEN}"

    async def setup() -> None:
        svc = await tenancy_bed.service()
        try:
            outcomes = await svc.provision_many(SHOPS)
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
            await copy_shops(svc, SHOPS)
        finally:
            await svc.close()

    asyncio.run(setup())
    return tenancy_bed


@pytest.fixture(scope="module")
def app(obs_bed: TenancyBed) -> Iterator[AppThread]:
    """One proxy app for a test module (strategy from the config: unified)."""
    with AppThread(obs_config(obs_bed)) as running:
        yield running
