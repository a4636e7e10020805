"""Running each driver's workload against a :class:`~.bed.Target`, and the comparison every driver test makes.

The Python drivers run in this process; node, java and psql are child
processes that get the connection from libpq's environment variables and
print the workload's JSON (psql prints markers that :func:`parse_psql`
turns into it). :func:`compare_driver` runs a driver directly on the
unmigrated copy and through the proxy, checks the direct run does what the
workload promises, writes both results next to the bed's proxy log, and
fails with every statement whose outcome differs.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.drivers import py_asyncpg, py_psycopg
from tests.integration.drivers.bed import BASELINE, DRIVER_SHOPS, SAMPLE_CUSTOMERS, DriverBed, Target
from tests.integration.drivers.lifecycle import LifecycleRun
from tests.integration.drivers.workload import (
    BY_LABEL,
    MISSING_CUSTOMER,
    Outcome,
    Result,
    check_shape,
    compare,
    copy_names,
    expect_direct,
    failures,
    report,
)

HERE = Path(__file__).parent
NODE_DIR = HERE / "node"
JAVA_SOURCE = HERE / "java" / "Workload.java"
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
PSQL_SCRIPT = HERE / "psql" / "workload.sql"
PROGRAM_TIMEOUT_S = 120

Runner = Callable[[Target, int, str], Result]
#: The sample's largest customer id: the customers ``all_shops`` counts (a parameter of every program).
MAX_CUSTOMER = BASELINE["customer_id"]


@dataclass
class Tier:
    """What the package fixture hands to the tests: the bed, every shop cut over and some retired by
    :attr:`lifecycle`."""

    bed: DriverBed
    lifecycle: LifecycleRun

    @property
    def results_dir(self) -> Path:
        path = self.bed.workdir / "results"
        path.mkdir(exist_ok=True)
        return path


# --- the drivers ---------------------------------------------------------------------------------
def run_psycopg(target: Target, shop: int, tag: str) -> Result:
    return py_psycopg.run(target.conninfo(), shop, tag, MAX_CUSTOMER)


def run_asyncpg(target: Target, shop: int, tag: str) -> Result:
    return asyncio.run(py_asyncpg.run(target.asyncpg_kwargs(), shop, tag, MAX_CUSTOMER))


def _program(args: list[str], target: Target, *, cwd: Path | None = None) -> Result:
    done = subprocess.run(args, env=target.env(), cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=PROGRAM_TIMEOUT_S, stdin=subprocess.DEVNULL)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"{' '.join(args[:3])} against {target.name} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result: Result = json.loads(lines[-1])
    return result


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs Debian's nodejs and npm)"
    return None


def run_node(target: Target, shop: int, tag: str) -> Result:
    if not (NODE_DIR / "node_modules" / "drizzle-orm").is_dir():
        raise AssertionError(f"the node packages are not installed: run `npm ci` in {NODE_DIR} "
                             "(.ci/run does)")
    return _program(["node", "workload.mjs", str(shop), tag, str(MAX_CUSTOMER)], target, cwd=NODE_DIR)


def java_missing() -> str | None:
    if shutil.which("java") is None or shutil.which("javac") is None:
        return "no JDK (java and javac) is installed (.ci/run installs default-jdk-headless)"
    return None


def run_pgjdbc(target: Target, shop: int, tag: str) -> Result:
    if not PGJDBC_JAR.exists():
        raise AssertionError(f"{PGJDBC_JAR} is missing: apt-get install libpostgresql-jdbc-java "
                             "(.ci/run does)")
    return _program(["java", "-cp", str(PGJDBC_JAR), str(JAVA_SOURCE), str(shop), tag, str(MAX_CUSTOMER)],
                    target)


def psql_script(shop: int, tag: str, copy_file: Path) -> str:
    copy_file.write_text("".join(f"{shop}\t{name}\t\\N\n" for name in copy_names(tag)))
    text = string.Template(PSQL_SCRIPT.read_text()).safe_substitute(
        shop=str(shop), tag=tag, copy_file=str(copy_file), missing_customer=str(MISSING_CUSTOMER),
        max_customer=str(MAX_CUSTOMER))
    assert "${" not in text, "a placeholder of the psql script was not filled in"
    return text


def parse_psql(stdout: str, shop: int) -> Result:
    """The psql script's output (``@@step``, rows, ``@@end SQLSTATE ROW_COUNT``, ``@@msg``) as JSON."""
    steps: list[Outcome] = []
    label: str | None = None
    rows: list[list[str | None]] = []
    pending: Outcome | None = None
    for line in stdout.splitlines():
        if line.startswith("@@step "):
            label, rows = line.split(" ", 1)[1], []
        elif line.startswith("@@end "):
            assert label is not None, stdout
            _, sqlstate, row_count = line.split(" ")
            kind = BY_LABEL[label].kind
            if sqlstate != "00000":
                pending = {"label": label, "error": {"sqlstate": sqlstate, "message": ""}}
            elif kind == "rows":
                pending = {"label": label, "rows": rows}
            elif kind == "count":
                pending = {"label": label, "count": int(row_count)}
            else:
                pending = {"label": label, "ok": True}
            steps.append(pending)
            label = None
        elif line.startswith("@@msg "):
            if pending is not None and "error" in pending:
                pending["error"]["message"] = line.split(" ", 1)[1]
            pending = None
        elif label is not None:
            rows.append([None if v == "<NULL>" else v for v in line.split("\t")])
    return {"driver": "psql", "shop": shop, "steps": steps}


def run_psql(target: Target, shop: int, tag: str, *, bindir: Path, workdir: Path) -> Result:
    script = workdir / f"psql-{target.name}-{shop}-{tag}.sql"
    script.write_text(psql_script(shop, tag, workdir / f"psql-{target.name}-{shop}-{tag}.copy"))
    done = subprocess.run([str(bindir / "psql"), "-X", "-q", "-f", str(script)], env=target.env(),
                          capture_output=True, text=True, check=False, timeout=PROGRAM_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0 or "@@step select_deleted" not in done.stdout:
        raise AssertionError(f"psql against {target.name} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return parse_psql(done.stdout, shop)


# --- the comparison ------------------------------------------------------------------------------
def compare_driver(tier: Tier, driver: str, runner: Runner) -> None:
    """The driver's workload directly and through the proxy: the same outcomes, statement by statement."""
    shop, tag = DRIVER_SHOPS[driver], driver
    direct = runner(tier.bed.direct, shop, tag)
    (tier.results_dir / f"{driver}-direct.json").write_text(json.dumps(direct, indent=1, default=str))
    expect_direct(direct, shops=SAMPLE_CUSTOMERS)
    proxied = runner(tier.bed.proxied, shop, tag)
    (tier.results_dir / f"{driver}-proxy.json").write_text(json.dumps(proxied, indent=1, default=str))
    check_shape(proxied, complete=False)
    differences = compare(direct, proxied, BASELINE)
    phases = tier.bed.phases()
    retired = sorted(s for s, p in phases.items() if p == "retired")
    text = report(f"{driver} (shop {shop} {phases[shop]}; every shop cut over, retired: {retired})",
                  differences)
    (tier.results_dir / f"{driver}-differences.txt").write_text(text + "\n")
    print(text)
    assert not failures(differences), text


# --- pgbench ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PgbenchRun:
    returncode: int
    processed: int
    expected: int
    failed: int | None
    aborted: list[str]
    output: str

    def problems(self) -> list[str]:
        found = []
        if self.failed != 0:
            found.append(f"number of failed transactions: {self.failed}")
        if self.aborted:
            found.append(f"{len(self.aborted)} clients aborted: " + "; ".join(self.aborted))
        if self.processed != self.expected:
            found.append(f"processed {self.processed}/{self.expected} transactions")
        if self.returncode != 0:
            found.append(f"exit status {self.returncode}")
        return found


def run_pgbench(target: Target, script: Path, *, bindir: Path, mode: str, clients: int, transactions: int,
                max_repair: int) -> PgbenchRun:
    args = [str(bindir / "pgbench"), "-n", "-M", mode, "-c", str(clients), "-j", "2", "-t", str(transactions),
            "-D", f"max_repair={max_repair}", "-f", str(script), target.dbname]
    done = subprocess.run(args, env=target.env(), capture_output=True, text=True, check=False,
                          timeout=PROGRAM_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)(?:/(\d+))?", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    # PostgreSQL 15+: "client 2 script 0 aborted in command 1 query 0: ERROR: ..."; older and meta
    # commands: "client 2 aborted in command 1 (SQL) of script 0; ..."
    aborted = re.findall(r"^.*\bclient \d+ (?:script \d+ )?aborted in command.*$", done.stderr, re.MULTILINE)
    return PgbenchRun(done.returncode, int(processed.group(1)) if processed else 0, clients * transactions,
                      int(failed.group(1)) if failed else None, aborted, output)


def skip_unless(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(reason)
