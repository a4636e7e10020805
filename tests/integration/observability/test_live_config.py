"""Live configuration: file edits and SIGHUP under load, invalid edits, API changes across instances.

* a strategy edit in ``config.toml`` while pgbench reads through the proxy
  switches routing with zero failed transactions and no reconnection;
* an invalid edit changes nothing and is counted as a failed reload;
* SIGHUP reloads a ``pgtenantproxy serve`` process;
* a rollback made through one instance's API reaches another instance
  (whose periodic refresh is a minute away) within a second, by NOTIFY;
* ``pgtenantproxy status`` shows the effective strategy and its source.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtenantproxy.config import load_config
from pgtenantproxy.embedded import free_port
from tests.fixtures.app import TEST_LISTEN, AppThread, http, wait_until
from tests.fixtures.proxy import ProxyProcess
from tests.fixtures.tenancy import DATABASE, TenancyBed
from tests.integration.observability.conftest import SHOPS, TOKEN, TOKEN_ENV, obs_config

API = "/api/superadmin/migration"
SCRIPT = "\\set shop random(1, 8)\nSELECT count(*), sum(price) FROM repairs WHERE shop_id = :shop;\n"


def _write_config(bed: TenancyBed, path: Path, listen: dict[str, Any] | None = None, **routing: Any) -> Path:
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (listen or _listen()).items()}
    sections["admin"]["token_env"] = TOKEN_ENV
    sections["routing"] = {"catalog_refresh_ms": 200, **routing}
    path.write_text(bed.config_toml(**sections))
    return path


def _listen() -> dict[str, dict[str, Any]]:
    return {name: dict(values) for name, values in TEST_LISTEN.items()}


def _outcomes(app: AppThread, target: str) -> int:
    assert app.app is not None and app.app.runtime is not None
    stats = app.app.runtime.dispatcher.stats
    return app.run(lambda: sum(n for (t, _), n in stats.outcomes.items() if t == target))


def _strategy(app: AppThread) -> tuple[str, str]:
    assert app.app is not None and app.app.runtime is not None
    runtime = app.app.runtime
    return app.run(lambda: (runtime.effective().name, runtime.effective().source))


def test_a_strategy_edit_under_pgbench_load_switches_routing_without_failures(
    obs_bed: TenancyBed, tmp_path: Path
) -> None:
    path = _write_config(obs_bed, tmp_path / "config.toml", strategy="unified")
    (tmp_path / "reads.sql").write_text(SCRIPT)
    with AppThread(load_config(path)) as app:
        env = obs_bed.unified.env()
        env["PGPORT"] = str(app.port)
        bench = subprocess.Popen(
            [str(obs_bed.unified.bindir / "pgbench"), "-n", "-M", "extended", "-c", "4", "-j", "2", "-T", "5",
             "-f", str(tmp_path / "reads.sql"), DATABASE],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert wait_until(lambda: _outcomes(app, "unified") > 200, timeout=10)
            assert _outcomes(app, "tenant") == 0
            assert app.app is not None
            connected = app.run(lambda: app.app.server.accepted_total if app.app else 0)
            _write_config(obs_bed, path, strategy="tenant")
            assert wait_until(lambda: _outcomes(app, "tenant") > 200, timeout=10)
            out, err = bench.communicate(timeout=60)
        finally:
            if bench.poll() is None:
                bench.kill()
        assert bench.returncode == 0, err
        assert "\nnumber of failed transactions: 0 (" in out, out
        assert app.app.server.accepted_total == connected  # nobody was disconnected and came back
        assert app.app.sources.reloads is not None and app.app.sources.reloads.succeeded == 1
        assert _strategy(app) == ("tenant", "config")


def test_an_invalid_edit_changes_nothing_and_counts_a_failed_reload(
    obs_bed: TenancyBed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_config(obs_bed, tmp_path / "config.toml", strategy="shop-list", shop_ids=[1, 2])
    with AppThread(load_config(path)) as app, caplog.at_level(logging.ERROR, logger="pgtenantproxy.reload"):
        assert app.app is not None and app.app.sources.reloads is not None
        reloads = app.app.sources.reloads
        good = app.app.config
        path.write_text(path.read_text().replace('strategy = "shop-list"', 'strategy = "everything"'))
        assert wait_until(lambda: reloads.failed == 1, timeout=10)
        assert "[routing] strategy" in caplog.text and "must be one of" in caplog.text
        assert app.app.config is good and _strategy(app) == ("shop-list", "config")
        with psycopg.connect(_dsn(obs_bed, app.port), autocommit=True) as conn:
            before = _outcomes(app, "tenant")
            for shop in SHOPS:
                conn.execute("SELECT count(*) FROM repairs WHERE shop_id = %s", (shop,)).fetchone()
            assert _outcomes(app, "tenant") - before == 2  # shops 1 and 2, as before the edit
        code, text = http("GET", app.metrics_url)
        assert code == 200 and 'pgtenantproxy_config_reloads_total{result="failure"} 1.0' in text
        assert "pgtenantproxy_config_last_reload_successful 0.0" in text
        _write_config(obs_bed, path, strategy="canary", canary_shop_ids=[3])
        assert wait_until(lambda: reloads.succeeded == 1, timeout=10)
        assert _strategy(app) == ("canary", "config") and reloads.failed == 1


def test_sighup_reloads_a_running_serve_process(obs_bed: TenancyBed, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("proxy", "metrics", "admin")}
    listen = {
        "proxy": {"listen": f"127.0.0.1:{ports['proxy']}", "shutdown_timeout_ms": 2000},
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
        "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
    }
    text = _write_config(obs_bed, tmp_path / "first.toml", listen, strategy="unified").read_text()
    proc = ProxyProcess(text, tmp_path)
    try:
        proc.start(ports["proxy"])
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        assert wait_until(lambda: _up(metrics), timeout=20)
        _write_config(obs_bed, proc.config_path, listen, strategy="percentage", percentage=40)
        proc.signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded (SIGHUP)" in proc.log, timeout=10), proc.log
        _, body = http("GET", metrics)
        assert 'pgtenantproxy_routing_strategy_info{source="config",strategy="percentage"} 1.0' in body
        assert "pgtenantproxy_routing_percentage 40.0" in body
        with psycopg.connect(_dsn(obs_bed, ports["proxy"])) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.stop()


def test_a_rollback_reaches_another_instance_within_a_second(obs_bed: TenancyBed) -> None:
    first = AppThread(obs_config(obs_bed))
    # The second instance would only re-read the catalog a minute later: only NOTIFY can be this fast.
    second = AppThread(obs_config(obs_bed, routing={"catalog_refresh_ms": 60000}))
    with first, second:
        try:
            code, body = http(
                "POST", f"{first.admin_url}{API}/activate-reads", {"strategy": "tenant"}, token=TOKEN
            )
            assert code == 200, body
            assert wait_until(lambda: _strategy(second) == ("tenant", "api"), timeout=5.0)
            code, body = http("POST", f"{first.admin_url}{API}/rollback-reads", token=TOKEN)
            assert code == 200 and body["strategy"]["name"] == "unified"
            assert _strategy(first) == ("unified", "api")  # the instance that was asked: before answering
            assert wait_until(lambda: _strategy(second) == ("unified", "api"), timeout=1.0)
            with psycopg.connect(_dsn(obs_bed, second.port), autocommit=True) as conn:
                before = _outcomes(second, "tenant")
                conn.execute("SELECT count(*) FROM repairs WHERE shop_id = %s", (1,)).fetchone()
                assert _outcomes(second, "tenant") == before
        finally:
            http("POST", f"{first.admin_url}{API}/use-config-strategy", token=TOKEN)
        assert wait_until(lambda: _strategy(second) == ("unified", "config"), timeout=1.0)


def test_status_command_shows_the_effective_strategy_and_its_source(
    obs_bed: TenancyBed, tmp_path: Path
) -> None:
    path = _write_config(obs_bed, tmp_path / "config.toml", strategy="canary", canary_shop_ids=[2])
    report = _status_json(path)
    assert report["strategy"]["name"] == "canary" and report["strategy"]["source"] == "config"
    reads = {s["shop_id"]: s["reads"] for s in report["shops"]}
    assert reads[2] == "tenant" and all(reads[s] == "unified" for s in SHOPS if s != 2)
    with AppThread(load_config(path)) as app:
        code, _ = http("POST", f"{app.admin_url}{API}/rollback-reads", token=TOKEN)
        assert code == 200
        try:
            report = _status_json(path)
            assert report["strategy"]["source"] == "api" and report["strategy"]["name"] == "unified"
            assert report["strategy"]["set_by"] == "ops@127.0.0.1"
            table = _run_status(path)
            assert "read strategy: unified, from the admin API (set by ops@127.0.0.1" in table
        finally:
            http("POST", f"{app.admin_url}{API}/use-config-strategy", token=TOKEN)
    assert "from the config file" in _run_status(path)


def _status_json(path: Path) -> dict[str, Any]:
    return json.loads(_run_status(path, "--json"))  # type: ignore[no-any-return]


def _run_status(path: Path, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pgtenantproxy", "status", "--config", str(path), *extra],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _up(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


def _dsn(bed: TenancyBed, port: int) -> str:
    return f"host=127.0.0.1 port={port} user=postgres password={bed.unified.password} dbname={DATABASE}"

