"""A real Prometheus (Debian's ``prometheus`` package) scrapes a proxy under load.

The proxy runs with routing (shop-list strategy: shops 1-4 on their tenant
databases, 5-8 on unified), write mirroring (capture on, the worker in the
proxy) and the alert rules of ``alerts/`` loaded into Prometheus. Load:
pgbench reading every shop, plus a client writing through the proxy (the
mirror applies those writes) and now and then failing a query. Then every
expression of the Grafana dashboard is run against Prometheus's HTTP API and
must return data; ``promtool check metrics`` must find nothing to say about
the exposition; the alert rules must load and evaluate cleanly, and pass
``promtool check rules`` / ``promtool test rules``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtenantproxy.embedded import free_port
from tests.fixtures.app import AppThread, http, wait_until
from tests.fixtures.tenancy import DATABASE, TenancyBed
from tests.integration.observability.conftest import obs_config

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "dashboards" / "pgtenantproxy.json"
RULES = REPO / "alerts" / "pgtenantproxy.rules.yml"
RULE_TESTS = REPO / "alerts" / "tests" / "pgtenantproxy_test.yml"
READS = "\\set shop random(1, 8)\nSELECT count(*), sum(price) FROM repairs WHERE shop_id = :shop;\n"
#: What Grafana would put in place of the dashboard's variables.
VARIABLES = {"$__rate_interval": "20s", "$shop": "1|2"}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian's prometheus package is not installed (.ci/run installs it)",
)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        code, body = http("GET", f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start(target: str) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: pgtenantproxy\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")
        logs.append(log)
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        procs.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc)
        assert wait_until(lambda: _ready(prom), timeout=30), (tmp_path / "prometheus.log").read_text()
        # Prometheus applies new targets every 5 s: wait for its first scrape before loading the proxy.
        assert wait_until(lambda: bool(prom.query("up == 1")), timeout=30, interval=0.2)
        return prom

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for log in logs:
        log.close()


def _ready(prom: Prometheus) -> bool:
    try:
        return http("GET", prom.url + "/-/ready", timeout=2)[0] == 200
    except OSError:
        return False


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of the dashboard, plus its variable queries."""
    doc = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            inner = variable["query"]["query"]
            metric = inner[len("label_values("):].split(",")[0]
            out.append((f"variable {variable['name']}", metric))
    return out


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _writes(bed: TenancyBed, port: int, stop: threading.Event) -> None:
    dsn = f"host=127.0.0.1 port={port} user=postgres password={bed.unified.password} dbname={DATABASE}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = 0
        while not stop.is_set():
            n += 1
            shop = n % 8 + 1
            conn.execute("UPDATE customers SET phone = phone WHERE shop_id = %s", (shop,))
            if n % 10 == 0:
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT count(*) / 0 FROM repairs WHERE shop_id = %s", (shop,))
            time.sleep(0.02)


@pytest.mark.slow
def test_prometheus_scrapes_a_proxy_under_load_and_every_dashboard_query_has_data(
    obs_bed: TenancyBed, prometheus_for: Any, tmp_path: Path
) -> None:
    config = obs_config(obs_bed, routing={"strategy": "shop-list", "shop_ids": [1, 2, 3, 4]},
                        metrics={"max_shop_series": 3})
    with AppThread(config, mirror=True) as app:
        assert app.mirror is not None
        app.call(app.mirror.enable())
        try:
            prom = prometheus_for(app.metrics_url.removeprefix("http://").removesuffix("/metrics"))
            _load(obs_bed, app, tmp_path)
            assert wait_until(lambda: bool(prom.query("pgtenantproxy_mirror_mirrored_total")), timeout=10)
            queries = dashboard_queries()
            missing = [(title, expr) for title, expr in queries if not prom.query(_substitute(expr))]
            assert missing == [], missing
            for source in ("unified", "tenant"):
                (p95,) = prom.query(_substitute(
                    "histogram_quantile(0.95, sum by (le) (rate(pgtenantproxy_query_duration_seconds_bucket"
                    f'{{source="{source}"}}[$__rate_interval])))'))
                assert 0 < float(p95["value"][1]) < 10, (source, p95)
            series = prom.query("pgtenantproxy_shop_query_duration_seconds_count")
            shops = {r["metric"]["shop"] for r in series}
            assert shops == {"1", "2", "3", "other"}  # max_shop_series = 3: the shop-list's first three
            _check_exposition(app)
            _check_rules_loaded(prom)
        finally:
            app.call(app.mirror.disable())
            with psycopg.connect(obs_bed.unified.dsn(dbname=DATABASE), autocommit=True) as conn:
                conn.execute("TRUNCATE pgtenantproxy.outbox")


def _load(bed: TenancyBed, app: AppThread, tmp_path: Path) -> None:
    script = tmp_path / "reads.sql"
    script.write_text(READS)
    env = bed.unified.env()
    env["PGPORT"] = str(app.port)
    stop = threading.Event()
    writer = threading.Thread(target=_writes, args=(bed, app.port, stop))
    writer.start()
    try:
        out = subprocess.run(
            [str(bed.unified.bindir / "pgbench"), "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6",
             "-f", str(script), DATABASE],
            env=env, capture_output=True, text=True, timeout=60,
        )
    finally:
        stop.set()
        writer.join(30)
    assert out.returncode == 0 and "\nnumber of failed transactions: 0 (" in out.stdout, out.stderr


def _check_exposition(app: AppThread) -> None:
    code, text = http("GET", app.metrics_url)
    assert code == 200
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", (
        lint.stdout, lint.stderr,
    )
    for name in ("pgtenantproxy_query_duration_seconds_bucket", "pgtenantproxy_mirror_dead_letters",
                 "pgtenantproxy_pool_connections", "pgtenantproxy_config_reloads_total"):
        assert name in text, name


def _check_rules_loaded(prom: Prometheus) -> None:
    code, body = http("GET", prom.url + "/api/v1/rules")
    assert code == 200
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    assert len(rules) == 8
    assert wait_until(lambda: all(r["health"] == "ok" for r in _rules(prom)), timeout=5), _rules(prom)


def _rules(prom: Prometheus) -> list[dict[str, Any]]:
    _, body = http("GET", prom.url + "/api/v1/rules")
    return [r for g in body["data"]["groups"] for r in g["rules"]]


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 8 rules found" in check.stdout, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                           cwd=RULE_TESTS.parent)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr
