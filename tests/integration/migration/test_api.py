"""The admin API's migration endpoints: migrate-data and verify-sync as jobs, phases, refusals.

One proxy app with write mirroring (so the keeper runs) and a bearer token,
against the lifecycle bed at "before backfill".
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from pgtenantproxy.lifecycle.store import set_fence
from tests.fixtures.app import AppThread, http, wait_until
from tests.integration.dualwrite.bed import MirrorBed, differences
from tests.integration.migration.test_phases import app_config

TOKEN_ENV = "PGTP_TEST_MIGRATION_TOKENS"
TOKEN = secrets.token_urlsafe(24)
PREFIX = "/api/superadmin/migration"


@pytest.fixture(scope="module")
def app(lbed: MirrorBed) -> Iterator[AppThread]:
    os.environ[TOKEN_ENV] = f"ops:{TOKEN}"
    with AppThread(app_config(lbed, admin={"enabled": True, "token_env": TOKEN_ENV}), mirror=True) as running:
        yield running


def call(app: AppThread, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return http(method, app.admin_url + PREFIX + path, body, token=TOKEN)


def phases(app: AppThread) -> dict[int, str]:
    code, answer = call(app, "GET", "/phases")
    assert code == 200, answer
    return {row["shop_id"]: row["phase"] for row in answer["shops"]}


async def test_migrate_data_waits_and_moves_the_shops_on(app: AppThread, lbed: MirrorBed) -> None:
    code, job = call(app, "POST", "/migrate-data", {"shop_ids": [1, 2], "jobs": 2, "wait": True})
    assert code == 200, job
    assert job["state"] == "done" and job["actor"].startswith("ops@")
    result = job["result"]
    assert result["ok"] and [s["shop_id"] for s in result["shops"]] == [1, 2]
    assert all(s["rows"] > 0 for s in result["shops"])
    assert job["progress"]["shops"]["1"]["rows_done"] == result["shops"][0]["rows"]
    assert wait_until(lambda: {phases(app)[1], phases(app)[2]} == {"mirroring"}, timeout=20), phases(app)
    assert await differences(lbed, (1, 2)) == {}
    conn = await lbed.unified_admin()
    try:
        audited = await conn.fetchval(
            "SELECT count(*) FROM pgtenantproxy.migration_log WHERE action = 'api:migrate-data'"
            " AND status = 'ok' AND actor LIKE 'ops@%'")
    finally:
        await conn.close()
    assert audited == 1


def test_verify_sync_runs_as_a_job_to_follow(app: AppThread) -> None:
    code, job = call(app, "POST", "/verify-sync", {"shop_ids": [1, 2]})
    assert code == 202 and job["state"] == "running", job
    done: dict[str, Any] = {}

    def finished() -> bool:
        status, answer = call(app, "GET", f"/jobs/{job['id']}")
        done.update(answer)
        return status == 200 and answer["state"] != "running"

    assert wait_until(finished, timeout=60, interval=0.2)
    assert done["state"] == "done", done
    assert done["result"]["status"] == "identical" and done["result"]["shops_verified"] == 2
    code, listing = call(app, "GET", "/jobs")
    assert code == 200 and job["id"] in [j["id"] for j in listing["jobs"]]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/migrate-data", {}, '"shop_ids"'),
        ("/migrate-data", {"shop_ids": ["7"]}, "positive integers"),
        ("/migrate-data", {"all": True, "shop_ids": [1]}, "not both"),
        ("/migrate-data", {"shop_id": 3, "jobs": 0}, "jobs must be a positive integer"),
        ("/migrate-data", {"shop_id": 3, "throttle_rows_per_s": -1}, "non-negative"),
        ("/verify-sync", {"shop_ids": []}, '"shop_ids"'),
    ],
)
def test_malformed_requests_are_refused_before_anything_starts(
    app: AppThread, path: str, body: dict[str, Any], message: str
) -> None:
    code, answer = call(app, "POST", path, body)
    assert code == 400 and message in answer["error"], answer


def test_a_refused_shop_fails_the_job_with_the_reason(app: AppThread) -> None:
    code, job = call(app, "POST", "/verify-sync", {"shop_id": 999, "wait": True})
    assert code == 409, job
    assert job["state"] == "failed" and "999" in job["error"] and "unified" in job["error"], job
    code, missing = call(app, "GET", "/jobs/999999")
    assert code == 404 and "no job 999999" in missing["error"]


def test_the_endpoints_need_the_token(app: AppThread) -> None:
    code, _ = http("POST", app.admin_url + PREFIX + "/migrate-data", {"all": True})
    assert code == 401


def test_status_shows_phases_and_backfill_progress(app: AppThread) -> None:
    code, report = call(app, "GET", "/status")
    assert code == 200, report
    shops = {s["shop_id"]: s for s in report["shops"]}
    assert shops[1]["phase"] == "mirroring" and shops[3]["phase"] == "provisioned"
    copied, _, tables = shops[1]["backfill"].partition(" rows, ")
    done, total = copied.split("/")
    assert int(done) == int(total) > 0 and tables.startswith("6/6")
    assert shops[3]["backfill"] is None
    assert report["summary"]["phases"]["provisioned"] >= 18
    assert not shops[1]["writes_held"]


async def test_status_shows_a_write_hold(app: AppThread, lbed: MirrorBed) -> None:
    conn = await lbed.unified_admin()
    try:
        await set_fence(conn, 2, hold_s=30)
        code, report = call(app, "GET", "/status")
        assert code == 200 and {s["shop_id"]: s["writes_held"] for s in report["shops"]}[2] is True
        await set_fence(conn, 2, hold_s=None)
        code, report = call(app, "GET", "/status")
        assert {s["shop_id"]: s["writes_held"] for s in report["shops"]}[2] is False
    finally:
        await conn.close()


def test_cutover_rollback_and_retirement_through_the_api(app: AppThread) -> None:
    code, _ = call(app, "POST", "/activate-reads", {"shop_ids": [1, 2]})
    assert code == 200
    assert wait_until(lambda: phases(app)[1] == phases(app)[2] == "reads_on_tenant", timeout=20), phases(app)
    code, ready = call(app, "GET", "/cutover-check?shop=1&shop=2")
    assert code == 200 and [s["ready"] for s in ready["shops"]] == [True, True], ready
    code, job = call(app, "POST", "/cutover", {"shop_id": 1, "wait": True})
    assert code == 200 and job["state"] == "done", job
    (shop,) = job["result"]["shops"]
    assert shop["status"] == "done" and shop["pause_ms"] > 0, shop
    assert job["result"]["pause_ms"]["p99"] == shop["pause_ms"]
    assert wait_until(lambda: phases(app)[1] == "tenant_primary", timeout=5)
    code, dry = call(app, "POST", "/retire-legacy", {"shop_ids": [1, 2], "dry_run": True, "wait": True})
    assert code == 200 and dry["result"]["dry_run"], dry
    outcome = {s["shop_id"]: s for s in dry["result"]["shops"]}
    assert outcome[1]["total_rows"] > 0 and outcome[1]["phase"] == "tenant_primary", outcome
    assert outcome[2]["status"] != outcome[1]["status"] and outcome[2]["reasons"], outcome
    code, job = call(app, "POST", "/rollback", {"shop_id": 1, "wait": True})
    assert code == 200 and job["result"]["shops"][0]["phase"] == "reads_on_tenant", job
    assert phases(app)[1] == "reads_on_tenant"
    code, bad = call(app, "POST", "/cutover", {"percentage": 101})
    assert code == 400 and "between 0 and 100" in bad["error"]
    code, bad = call(app, "GET", "/cutover-check")
    assert code == 400
