"""What the benchmark talks to: a throwaway cluster, the proxy, and PgBouncer.

Everything listens on 127.0.0.1 only. The bench role's password lives in the
environment of the child processes (``PGPASSWORD``) and nowhere else: it is
never printed, never on a command line. PgBouncer gets the role's SCRAM
verifier (copied from ``pg_authid``), not the password, in an auth file only
its own OS user can read; with the verifier it authenticates to the server on
the client's behalf (SCRAM pass-through, PgBouncer >= 1.14).

The proxy runs as ``python -m pgtenantproxy serve`` in its own process, as
PgBouncer does, and so does the bare byte forwarder (``bench/forwarder.py``,
the "Python floor"), so none shares a process with pgbench.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgtenantproxy.embedded import PgCluster, create_cluster, free_port

REPO = Path(__file__).resolve().parent.parent
BENCH_USER = "bench"
BENCH_DB = "bench"


@dataclass
class Target:
    """One thing pgbench can connect to."""

    name: str
    port: int
    dbname: str = BENCH_DB
    pid: int | None = None  # the serving process, whose CPU time is measured


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BenchCluster:
    cluster: PgCluster
    password: str = field(repr=False)

    @property
    def direct(self) -> Target:
        return Target("direct", self.cluster.port)

    def env(self) -> dict[str, str]:
        """libpq environment for the bench role (holds the password: never print it)."""
        env = self.cluster.env(user=BENCH_USER, password=self.password)
        env["PGHOST"] = "127.0.0.1"
        return env

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.cluster.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
             "-d", dbname, "-c", sql],
            env=self.cluster.env(), capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def scram_verifier(self) -> str:
        return self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{BENCH_USER}'")


def start_cluster(scale: int) -> BenchCluster:
    """A throwaway cluster with a ``bench`` role and database, initialised by ``pgbench -i``."""
    cluster = create_cluster(settings={"max_connections": "100", "shared_buffers": "128MB"})
    bench = BenchCluster(cluster, secrets.token_urlsafe(18))
    try:
        bench.psql(f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{bench.password}'")
        bench.psql(f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER}")
        subprocess.run(
            [pgbench_path(cluster), "-i", "-q", "-s", str(scale), "--unlogged-tables", BENCH_DB],
            env=bench.env(), capture_output=True, text=True, check=True,
        )
        bench.psql("VACUUM ANALYZE", dbname=BENCH_DB)
    except BaseException:
        cluster.destroy()
        raise
    return bench


def pgbench_path(cluster: PgCluster) -> str:
    local = cluster.bindir / "pgbench"
    return str(local) if local.exists() else (shutil.which("pgbench") or "pgbench")


def wait_listening(
    name: str, port: int, proc: subprocess.Popen[Any], log: Path, *, timeout: float = 20
) -> None:
    """Wait until ``proc`` itself listens on 127.0.0.1:``port``.

    On Linux the listening socket must belong to ``proc`` (``/proc/<pid>/fd`` against
    ``/proc/net/tcp``): other processes on the machine (test suites starting their own
    clusters) may take the same free port first, and a connect test alone would then
    send pgbench to their server. Elsewhere, a successful connect is taken as ready.
    """
    deadline = time.monotonic() + timeout
    owned = Path(f"/proc/{proc.pid}/fd").is_dir()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited early:\n{text}")
        if owned:
            if listens(proc.pid, port):
                return
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} does not listen on 127.0.0.1:{port} after {timeout}s")


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    inodes: set[str] = set()
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for fd in names:
        try:
            inodes.add(os.readlink(fds / fd))
        except OSError:  # closed meanwhile
            continue
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()  # sl local_address rem_address st ... inode
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                if f"socket:[{cols[9]}]" in inodes:
                    return True
    return False


class Service:
    """A child process serving one or more targets; stopped with SIGTERM."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, targets: list[Target]) -> None:
        self.proc = proc
        self.workdir = workdir
        self.targets = targets

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_proxy(bench: BenchCluster, *, name: str = "proxy", source: Path = REPO) -> Service:
    """``python -m pgtenantproxy serve`` from ``source`` (this checkout), in its own process."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-proxy-"))
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nshutdown_timeout_ms = 2000\n\n'
        f'[unified]\nhost = "127.0.0.1"\nport = {bench.cluster.port}\n'
        f'database = "{BENCH_DB}"\nsslmode = "disable"\n\n[logging]\nlevel = "warning"\n'
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    command = [sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)]
    return _start_listener(command, workdir, log, Target(name, port), env=env)


def start_forwarder(server_port: int, *, name: str = "forwarder", dbname: str = BENCH_DB) -> Service:
    """``bench/forwarder.py`` (bare asyncio + uvloop byte forwarder) to ``server_port``, own process."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-forwarder-"))
    port = free_port()
    log = workdir / "forwarder.log"
    script = Path(__file__).resolve().parent / "forwarder.py"
    command = [sys.executable, str(script), "--listen-port", str(port),
               "--target-host", "127.0.0.1", "--target-port", str(server_port)]
    return _start_listener(command, workdir, log, Target(name, port, dbname))


def _start_listener(
    command: list[str], workdir: Path, log: Path, target: Target, *, env: dict[str, str] | None = None
) -> Service:
    """Run ``command`` in its own process, logging to ``log``, until it listens on ``target.port``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    service = Service(proc, workdir, [dataclasses.replace(target, pid=proc.pid)])
    try:
        wait_listening(target.name, target.port, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


def _drop_root() -> dict[str, Any]:
    """PgBouncer refuses to run as root: run it as the ``postgres`` OS user then."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def pgbouncer_ini(bench: BenchCluster, port: int, workdir: Path) -> str:
    server = f"host=127.0.0.1 port={bench.cluster.port} dbname={BENCH_DB}"
    return "\n".join([
        "[databases]",
        f"{BENCH_DB} = {server} pool_mode=transaction",
        f"{BENCH_DB}_session = {server} pool_mode=session",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {workdir / 'userlist.txt'}",
        f"logfile = {workdir / 'pgbouncer.log'}",
        "pool_mode = transaction",
        "max_client_conn = 200",
        "default_pool_size = 20",
        "log_connections = 0",
        "log_disconnections = 0",
        "ignore_startup_parameters = extra_float_digits",
        "",
    ])


def start_pgbouncer(bench: BenchCluster) -> Service | None:
    """PgBouncer in transaction mode (and a session-mode database for -M prepared), if installed."""
    binary = pgbouncer_binary()
    if binary is None:
        return None
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-pgbouncer-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
    port = free_port()
    _private_file(workdir / "userlist.txt", f'"{BENCH_USER}" "{bench.scram_verifier()}"\n')
    ini = workdir / "pgbouncer.ini"
    _private_file(ini, pgbouncer_ini(bench, port, workdir))
    log = workdir / "pgbouncer.log"
    proc = subprocess.Popen(
        [binary, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, cwd=workdir, **_drop_root(),
    )
    targets = [
        Target("pgbouncer", port, pid=proc.pid),
        Target("pgbouncer-session", port, f"{BENCH_DB}_session", pid=proc.pid),
    ]
    service = Service(proc, workdir, targets)
    try:
        wait_listening("pgbouncer", port, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


def pgbouncer_binary() -> str | None:
    """PgBouncer on PATH, or where Debian puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if Path(p).exists()), None)


def pgbouncer_version() -> str | None:
    binary = pgbouncer_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else None
