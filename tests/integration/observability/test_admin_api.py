"""The admin API end to end: auth, every endpoint against the real clusters, the audit trail.

One proxy app for the module (routing on, strategy ``unified`` in its config).
Where reads went is read from the proxy's own outcome counters; the API's
changes are checked in its answers, in ``status``, in real traffic, and in
``pgtenantproxy.migration_log``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgtenantproxy.admin.auth import AdminConfigError
from pgtenantproxy.admin.openapi import document
from pgtenantproxy.routing import percentage_bucket
from tests.fixtures.app import AppThread, http
from tests.fixtures.tenancy import DATABASE, TenancyBed
from tests.integration.observability.conftest import OTHER_TOKEN, SHOPS, TOKEN, obs_config

API = "/api/superadmin/migration"
COUNT_SQL = "SELECT count(*) FROM repairs WHERE shop_id = %s"


def _dsn(bed: TenancyBed, port: int) -> str:
    return f"host=127.0.0.1 port={port} user=postgres password={bed.unified.password} dbname={DATABASE}"


def _tenant_reads(app: AppThread) -> int:
    assert app.app is not None and app.app.runtime is not None
    stats = app.app.runtime.dispatcher.stats
    return app.run(lambda: sum(n for (target, _), n in stats.outcomes.items() if target == "tenant"))


def _tenant_shops(bed: TenancyBed, app: AppThread) -> set[int]:
    """Read every shop once through the proxy; the shops whose read went to their tenant database."""
    went = set()
    with psycopg.connect(_dsn(bed, app.port), autocommit=True) as conn:
        for shop in SHOPS:
            before = _tenant_reads(app)
            conn.execute(COUNT_SQL, (shop,)).fetchone()
            if _tenant_reads(app) > before:
                went.add(shop)
    return went


def _audit(bed: TenancyBed, action: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(bed.unified.dsn(dbname=DATABASE)) as conn:
        return conn.execute(
            "SELECT actor, status, detail FROM pgtenantproxy.migration_log WHERE action = %s ORDER BY id",
            (action,),
        ).fetchall()


def _post(app: AppThread, name: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    return http("POST", f"{app.admin_url}{API}/{name}", body, token=token)


def _status(app: AppThread) -> dict[str, Any]:
    code, body = http("GET", f"{app.admin_url}{API}/status", token=TOKEN)
    assert code == 200, body
    return body  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _config_strategy_again(app: AppThread) -> Iterator[None]:
    yield
    code, body = _post(app, "use-config-strategy")
    assert code == 200, body


def test_superadmin_routes_need_the_bearer_token(app: AppThread, obs_bed: TenancyBed) -> None:
    status_url = f"{app.admin_url}{API}/status"
    assert http("GET", status_url)[0] == 401
    assert http("GET", status_url, token="x" * 32)[0] == 401
    assert http("GET", status_url, token=TOKEN[:-1])[0] == 401
    assert http("GET", status_url, token=TOKEN)[0] == 200
    assert http("GET", status_url, token=OTHER_TOKEN)[0] == 200
    before = len(_audit(obs_bed, "api:rollback-reads"))
    code, body = _post(app, "activate-reads", {"strategy": "tenant"}, token="y" * 32)
    assert code == 401 and "bearer token" in body["error"]
    assert len(_audit(obs_bed, "api:rollback-reads")) == before
    assert _status(app)["strategy"]["source"] == "config"  # nothing was written
    for path in ("/healthz", "/readyz", "/api/openapi.json"):
        assert http("GET", app.admin_url + path)[0] == 200, path


def test_status_reports_every_shop_and_the_config_strategy(app: AppThread, obs_bed: TenancyBed) -> None:
    report = _status(app)
    assert report["strategy"]["name"] == "unified"
    assert report["strategy"]["source"] == "config"
    shops = {s["shop_id"]: s for s in report["shops"]}
    assert set(SHOPS) <= set(shops)
    for shop in SHOPS:
        row = shops[shop]
        assert row["state"] == "provisioned" and row["server"] in ("t1", "t2")
        assert (row["reads"], row["reason"]) == ("unified", "strategy_unified")
        assert row["dead_letters"] == 0 and row["degraded"] is False
    assert report["summary"]["reads_on_tenant"] == 0


def test_activate_reads_by_percentage_routes_those_shops_and_is_audited(
    app: AppThread, obs_bed: TenancyBed
) -> None:
    assert _tenant_shops(obs_bed, app) == set()
    code, body = _post(app, "activate-reads", {"percentage": 50})
    assert code == 200, body
    assert body["strategy"]["name"] == "percentage" and body["strategy"]["percentage"] == 50
    assert body["strategy"]["source"] == "api" and body["strategy"]["set_by"] == "ops@127.0.0.1"
    chosen = {s for s in SHOPS if percentage_bucket(s) < 50}
    assert 0 < len(chosen) < len(SHOPS)
    assert {s["shop_id"] for s in _status(app)["shops"] if s["reads"] == "tenant"} == chosen
    assert _tenant_shops(obs_bed, app) == chosen  # the answer came after the switch: no waiting
    actor, status, detail = _audit(obs_bed, "api:activate-reads")[-1]
    assert (actor, status) == ("ops@127.0.0.1", "ok")
    assert '"percentage": 50' in detail


def test_shop_list_then_rollback_wins_then_config_again(app: AppThread, obs_bed: TenancyBed) -> None:
    code, body = _post(app, "activate-reads", {"shop_ids": [3, 2, 3]}, token=OTHER_TOKEN)
    assert code == 200, body
    assert body["strategy"]["name"] == "shop-list" and body["strategy"]["shop_ids"] == [2, 3]
    assert _tenant_shops(obs_bed, app) == {2, 3}
    code, body = _post(app, "rollback-reads")
    assert code == 200, body
    assert (body["strategy"]["name"], body["strategy"]["source"]) == ("unified", "api")
    assert _tenant_shops(obs_bed, app) == set()
    assert _audit(obs_bed, "api:rollback-reads")[-1][:2] == ("ops@127.0.0.1", "ok")
    assert _audit(obs_bed, "api:activate-reads")[-1][0] == "ci@127.0.0.1"
    code, body = _post(app, "use-config-strategy")
    assert code == 200 and body["strategy"]["source"] == "config"
    assert _audit(obs_bed, "api:use-config-strategy")[-1][1] == "ok"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"percentage": 150}, "between 0 and 100"),
        ({"percentage": True}, "between 0 and 100"),
        ({"shop_ids": []}, "non-empty list"),
        ({"shop_ids": [1, "2"]}, "non-empty list"),
        ({"percentage": 10, "shop_ids": [1]}, "either percentage or shop_ids"),
        ({"nope": 1}, "unknown field"),
        ({}, "give"),
        ([1, 2], "JSON object"),
    ],
)
def test_activate_reads_refuses_malformed_requests(app: AppThread, body: Any, text: str) -> None:
    code, answer = _post(app, "activate-reads", body)
    assert code == 400 and text in answer["error"], answer
    assert _status(app)["strategy"]["source"] == "config"


def test_provision_all_provisions_the_missing_shops(obs_bed: TenancyBed) -> None:
    config = obs_config(obs_bed, tenancy={"shops_query": "SELECT id FROM shops WHERE id <= 10 ORDER BY id"})
    with AppThread(config) as app:
        code, body = _post(app, "provision-all", {"concurrency": 2})
        assert code == 200, body
        assert (body["ok"], body["shops"], body["already"], body["provisioned"]) == (True, 10, 8, 2)
        states = {s["shop_id"]: s["state"] for s in _status(app)["shops"]}
        assert states[9] == states[10] == "provisioned"
        code, body = _post(app, "provision-all")
        assert code == 200 and (body["already"], body["provisioned"]) == (10, 0)
        code, body = _post(app, "provision-all", {"concurrency": 0})
        assert code == 400
    rows = _audit(obs_bed, "api:provision-all")
    assert [r[1] for r in rows[-2:]] == ["ok", "ok"] and '"provisioned": 2' in rows[-2][2]


def test_dual_write_enable_and_disable(app: AppThread, obs_bed: TenancyBed) -> None:
    code, body = _post(app, "enable-dual-write")
    assert code == 200, body
    assert body["capture"] is True and "public.repairs" in body["tables"]
    report = _status(app)
    assert report["dual_write"]["enabled"] is True
    assert report["dual_write"]["capture_tables"] == len(body["tables"])
    with psycopg.connect(obs_bed.unified.dsn(dbname=DATABASE)) as conn:
        conn.execute("UPDATE customers SET name = name WHERE shop_id = 1")
        queued = conn.execute("SELECT count(*) FROM pgtenantproxy.outbox WHERE shop_id = 1").fetchone()
    assert queued is not None and queued[0] > 0  # committed writes are captured
    code, body = _post(app, "disable-dual-write")
    assert code == 200 and body["capture"] is False
    assert _status(app)["dual_write"]["capture_tables"] == 0
    assert _audit(obs_bed, "api:enable-dual-write")[-1][:2] == ("ops@127.0.0.1", "ok")
    assert _audit(obs_bed, "api:disable-dual-write")[-1][:2] == ("ops@127.0.0.1", "ok")
    with psycopg.connect(obs_bed.unified.dsn(dbname=DATABASE), autocommit=True) as conn:
        conn.execute("TRUNCATE pgtenantproxy.outbox")


def test_performance_reports_what_went_through(app: AppThread, obs_bed: TenancyBed) -> None:
    _post(app, "activate-reads", {"shop_ids": [1]})
    with psycopg.connect(_dsn(obs_bed, app.port), autocommit=True) as conn:
        for _ in range(10):
            for shop in (1, 4):
                conn.execute(COUNT_SQL, (shop,)).fetchone()
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT count(*) / 0 FROM repairs WHERE shop_id = %s", (4,))
    code, report = http("GET", f"{app.admin_url}{API}/performance", token=TOKEN)
    assert code == 200
    shops = {s["shop_id"]: s for s in report["shops"]}
    assert shops[1]["by_source"]["tenant"]["total"] >= 10
    assert shops[4]["by_source"]["unified"]["total"] >= 11 and shops[4]["overall"]["errors"] >= 1
    assert shops[4]["by_table"]["repairs"]["total"] >= 11 and shops[4]["by_type"]["select"]["total"] >= 11
    comparison = shops[1]["comparison"]
    assert comparison["tenant_p50_ms"] is not None and comparison["tenant_p50_ms"] > 0
    code, one = http("GET", f"{app.admin_url}{API}/performance?shop=4", token=TOKEN)
    assert code == 200 and [s["shop_id"] for s in one["shops"]] == [4]
    assert http("GET", f"{app.admin_url}{API}/performance?shop=x", token=TOKEN)[0] == 400


def test_health_and_the_openapi_document(app: AppThread) -> None:
    assert http("GET", app.admin_url + "/healthz") == (200, {"status": "ok"})
    code, ready = http("GET", app.admin_url + "/readyz")
    assert code == 200 and ready["status"] == "ready"
    code, doc = http("GET", app.admin_url + "/api/openapi.json")
    assert code == 200 and doc == document()


def test_an_open_admin_api_on_a_public_address_stops_the_proxy(obs_bed: TenancyBed) -> None:
    config = obs_config(obs_bed, admin={"listen": "0.0.0.0:0", "token_env": "PGTP_TEST_NO_SUCH_TOKEN"})
    app = AppThread(config)
    try:
        with pytest.raises(AdminConfigError, match="not a loopback address"):
            app.start()
        assert app.app is not None and app.app.runtime is None  # what had started was stopped again
    finally:
        app.stop()
