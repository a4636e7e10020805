"""The credential registry: sealed at rest, failures that are clean, the cache, key rotation,
and password rotation while a client keeps querying."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.tenancy.crypto import DataKey, DecryptionError, Keyring, UnknownKeyError
from pgtenantproxy.tenancy.registry import ConnectionRegistry, connect_tenant
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import ENV, TenancyBed

SHOPS = (1, 2, 3)


@pytest.fixture(scope="module")
async def svc(bed: TenancyBed) -> AsyncIterator[TenancyService]:
    service = await bed.service()
    try:
        outcomes = await service.provision_many(SHOPS)
        assert all(o.status == "provisioned" for o in outcomes), outcomes
        yield service
    finally:
        await service.close()


async def row(svc: TenancyService, shop_id: int) -> asyncpg.Record:
    return await svc.pool.fetchrow(
        "SELECT key_id, password_enc, dsn_enc FROM pgtenantproxy.tenant_credentials WHERE shop_id = $1",
        shop_id,
    )


async def put(svc: TenancyService, shop_id: int, key_id: str, password_enc: bytes) -> None:
    await svc.pool.execute(
        "UPDATE pgtenantproxy.tenant_credentials SET key_id = $2, password_enc = $3 WHERE shop_id = $1",
        shop_id,
        key_id,
        password_enc,
    )


def fresh(svc: TenancyService, keyring: Keyring | None = None) -> ConnectionRegistry:
    return ConnectionRegistry(svc.pool, keyring or svc.registry.keyring, ttl_s=3600)


async def test_credentials_are_complete_and_their_repr_is_masked(
    bed: TenancyBed, svc: TenancyService
) -> None:
    creds = await svc.credentials(2)
    assert (creds.shop_id, creds.database, creds.user) == (2, "shop_2_db", "shop_user_2")
    assert (creds.host, creds.port) == (bed.tenant_of(creds.server).host, bed.tenant_of(creds.server).port)
    for text in (repr(creds), str(creds), repr(svc.registry.keyring), repr(svc.servers.servers)):
        assert creds.password not in text and bed.key_hex not in text
    assert "password='***'" in repr(creds)
    conn = await asyncpg.connect(creds.dsn())
    try:
        assert await conn.fetchval("SELECT current_user") == "shop_user_2"
    finally:
        await conn.close()


async def test_tampered_ciphertext_fails_cleanly(svc: TenancyService) -> None:
    original = await row(svc, 2)
    blob = bytearray(original["password_enc"])
    blob[20] ^= 0x01
    await put(svc, 2, original["key_id"], bytes(blob))
    try:
        with pytest.raises(DecryptionError, match="shop 2: password failed authentication") as info:
            await fresh(svc).get(2)
        assert info.type is DecryptionError
        await put(svc, 2, original["key_id"], original["password_enc"][:10])
        with pytest.raises(DecryptionError, match="not a sealed value"):
            await fresh(svc).get(2)
    finally:
        await put(svc, 2, original["key_id"], original["password_enc"])
    assert (await fresh(svc).get(2)).user == "shop_user_2"


async def test_another_shops_ciphertext_does_not_decrypt(svc: TenancyService) -> None:
    mine, theirs = await row(svc, 3), await row(svc, 2)
    await put(svc, 3, theirs["key_id"], theirs["password_enc"])
    try:
        with pytest.raises(DecryptionError, match="shop 3"):
            await fresh(svc).get(3)
    finally:
        await put(svc, 3, mine["key_id"], mine["password_enc"])


async def test_the_wrong_key_fails_cleanly(svc: TenancyService) -> None:
    other = Keyring(DataKey.generate())
    with pytest.raises(UnknownKeyError, match="not in the keyring"):
        await fresh(svc, other).get(1)
    # Same id label, different key material: authentication fails.
    original = await row(svc, 1)
    await put(svc, 1, other.primary_id, original["password_enc"])
    try:
        with pytest.raises(DecryptionError) as info:
            await fresh(svc, other).get(1)
        assert info.type is DecryptionError
    finally:
        await put(svc, 1, original["key_id"], original["password_enc"])


async def test_the_cache_serves_until_the_ttl_expires(svc: TenancyService) -> None:
    now = [1000.0]
    registry = ConnectionRegistry(svc.pool, svc.registry.keyring, ttl_s=60, clock=lambda: now[0])
    first = await registry.get(1)
    original = await row(svc, 1)
    await put(svc, 1, original["key_id"], b"\x01" + bytes(40))  # the stored row goes bad
    try:
        now[0] += 59
        assert await registry.get(1) is first  # still cached: the database is not read
        now[0] += 2
        with pytest.raises(DecryptionError):  # expired: read again
            await registry.get(1)
        concurrent = await asyncio.gather(*(registry.get(2) for _ in range(20)))
        assert len({id(c) for c in concurrent}) == 1  # one load for many askers
    finally:
        await put(svc, 1, original["key_id"], original["password_enc"])


async def test_key_rotation_reseals_every_row(bed: TenancyBed, svc: TenancyService) -> None:
    old_hex, new_hex = bed.key_hex, secrets.token_hex(32)
    env = {**os.environ, ENV["key"]: new_hex, ENV["previous"]: old_hex}
    rotating = await TenancyService.open(svc.config, environ=env, pool_size=2)
    try:
        new_id = rotating.registry.keyring.primary_id
        assert (await rotating.credentials(1)).password == (
            await svc.credentials(1)
        ).password  # old rows readable
        passwords = {s: (await svc.credentials(s)).password for s in SHOPS}
        assert await rotating.rotate_key() == len(SHOPS)
        assert await rotating.rotate_key() == 0
        key_ids = await rotating.pool.fetch("SELECT DISTINCT key_id FROM pgtenantproxy.tenant_credentials")
        assert [r[0] for r in key_ids] == [new_id]
    finally:
        await rotating.close()
    only_new = await TenancyService.open(svc.config, environ={ENV["key"]: new_hex}, pool_size=2)
    try:
        assert {s: (await only_new.credentials(s)).password for s in SHOPS} == passwords
    finally:
        await only_new.close()
    with pytest.raises(UnknownKeyError):
        await fresh(svc).get(1)  # the old key alone no longer opens anything
    back = await TenancyService.open(
        svc.config, environ={ENV["key"]: old_hex, ENV["previous"]: new_hex}, pool_size=2
    )
    try:  # rotate back, so the rest of the suite keeps its key
        assert await back.rotate_key() == len(SHOPS)
    finally:
        await back.close()
    assert (await fresh(svc).get(1)).password == passwords[1]


async def test_password_rotation_under_a_query_loop_fails_no_query(
    bed: TenancyBed, svc: TenancyService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgtenantproxy.tenancy.registry")
    shop = 1
    other_process = ConnectionRegistry(
        svc.pool, svc.registry.keyring, ttl_s=3600
    )  # stale cache after rotation
    old = await other_process.get(shop)
    kept = await connect_tenant(other_process, shop)  # a pooled connection that stays open throughout
    done = asyncio.Event()
    counts = {"queries": 0, "connects": 0}

    async def loop() -> None:
        while not done.is_set() or counts["connects"] < 5:
            conn = await connect_tenant(other_process, shop, timeout=30)
            counts["connects"] += 1
            try:
                for _ in range(3):
                    assert await conn.fetchval("SELECT count(*) FROM customers") >= 0
                    assert await kept.fetchval("SELECT 1") == 1
                    counts["queries"] += 2
            finally:
                await conn.close()

    worker = asyncio.create_task(loop())
    try:
        for _ in range(3):
            await asyncio.sleep(0.2)
            await svc.rotate_password(shop)
    finally:
        done.set()
        await worker  # re-raises any failed query or connection
        await kept.close()
    assert counts["connects"] >= 5 and counts["queries"] >= 30
    new = await fresh(svc).get(shop)
    assert new.password != old.password
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(**old.connect_kwargs())
    conn = await asyncpg.connect(**new.connect_kwargs())
    await conn.close()
    assert "password rejected, reloading credentials" in caplog.text  # the stale cache was noticed
    assert old.password not in caplog.text and new.password not in caplog.text
    rotated = await svc.pool.fetchval(
        "SELECT count(*) FROM pgtenantproxy.migration_log WHERE shop_id = $1 AND action = 'rotate-password'",
        shop,
    )
    assert rotated == 3
