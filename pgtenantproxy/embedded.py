"""Throwaway PostgreSQL clusters from the local server binaries.

Used by ``pgtenantproxy demo`` and by the test suite: ``initdb`` + ``pg_ctl``
in a temporary directory, listening on a free loopback port (asked of the OS,
retried if another process takes it first), scram-sha-256 authentication.
As root, the server runs as the ``postgres`` OS user (PostgreSQL refuses root).

Invariants: nothing here talks to anything but 127.0.0.1; the superuser
password never appears in a repr, a log line or a command line.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found.\n"
    "Install them, for example:\n"
    "  Debian/Ubuntu:  sudo apt-get install postgresql\n"
    "  Fedora/RHEL:    sudo dnf install postgresql-server\n"
    "  macOS:          brew install postgresql\n"
    "or point PGTENANTPROXY_PG_BINDIR at the directory that holds them."
)

DEFAULT_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "password_encryption": "'scram-sha-256'",
    "log_min_messages": "warning",
    "log_connections": "off",
    "max_prepared_transactions": "0",
}


class PostgresNotFound(RuntimeError):
    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def find_bindir() -> Path:
    """Where initdb/pg_ctl/postgres live: $PGTENANTPROXY_PG_BINDIR, PATH, or Debian's layout."""
    candidates: list[Path] = []
    env = os.environ.get("PGTENANTPROXY_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    candidates.extend(Path(p) for p in ("/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin"))
    for directory in candidates:
        if all((directory / b).is_file() for b in BINARIES):
            return directory
    raise PostgresNotFound()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (it may be taken before we use it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[int | None, int | None]:
    """(uid, gid) to drop root to the postgres OS user; (None, None) when not root."""
    if os.geteuid() != 0:
        return None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, but there is no 'postgres' OS user to run the server as"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


@dataclass
class PgCluster:
    """A running (or stopped) throwaway cluster."""

    bindir: Path
    basedir: Path
    superuser: str = "postgres"
    password: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / "server.log"

    def dsn(self, *, user: str | None = None, password: str | None = None, dbname: str = "postgres") -> str:
        """A libpq key/value connection string (contains the password: never log it)."""
        user = user or self.superuser
        pw = self.password if password is None else password
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if pw:
            parts.append(f"password={pw}")
        return " ".join(parts)

    def connect_kwargs(
        self, *, user: str | None = None, password: str | None = None, database: str = "postgres"
    ) -> dict[str, object]:
        """Keyword arguments for asyncpg.connect / psycopg.connect."""
        return {
            "host": self.host,
            "port": self.port,
            "user": user or self.superuser,
            "password": self.password if password is None else password,
            "database": database,
        }

    def env(self, *, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """Environment for libpq tools (psql, pgbench) talking to this cluster."""
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=user or self.superuser)
        env["PGPASSWORD"] = self.password if password is None else password
        return env

    # --- lifecycle ----------------------------------------------------------
    def init(self, hba_lines: Iterable[str] = ()) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        _chown_for_server(self.basedir)
        os.chmod(self.basedir, 0o755)
        pwfile = self.basedir / "pwfile"
        pwfile.write_text(self.password + "\n")
        _chown_for_server(pwfile)
        os.chmod(pwfile, 0o600)
        try:
            self._pg(
                "initdb", "-D", str(self.datadir), "-U", self.superuser, f"--pwfile={pwfile}",
                "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        hba = [
            *hba_lines,
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        self._write_server_file("pg_hba.conf", "\n".join(hba) + "\n")

    def start(self, *, attempts: int = 6) -> None:
        """Start on a free port; retry with another port if it was taken meanwhile."""
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port(self.host)
            self._write_conf()
            result = self._pg(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start",
                check=False,
            )
            if result.returncode == 0:
                return
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            if "could not bind" in log or "already in use" in log or "could not create" in log:
                self.logfile.unlink(missing_ok=True)
                continue
            raise RuntimeError(f"pg_ctl start failed ({result.returncode}):\n{result.stdout}\n{log[-2000:]}")
        raise RuntimeError(f"could not find a free port for PostgreSQL after {attempts} attempts")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self._write_conf()
        self._pg("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, as far as clients can tell)."""
        pidfile = self.datadir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)

    def crash(self) -> None:
        """SIGKILL the postmaster and every server process at once.

        The whole server vanishes without a word to any client (an OOM kill, a
        lost host). A plain :meth:`kill` leaves the backends running, and they
        tell their clients "unexpected postmaster exit" (57P01) themselves.
        """
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGSTOP)  # it must not react to its children dying
        except ProcessLookupError:
            return
        children = _children(pid)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)

    def start_same_port(self, *, timeout: float = 30) -> None:
        """Start again on the port it had, after :meth:`kill` or :meth:`crash`.

        Retried until ``timeout``: orphaned backends of a killed postmaster hold
        the shared memory (and the port) for a moment.
        """
        self._write_conf()
        deadline = time.monotonic() + timeout
        while True:
            result = self._pg(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start",
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}):\n{result.stdout[-2000:]}")
            time.sleep(0.2)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.basedir, ignore_errors=True)

    # --- helpers ------------------------------------------------------------
    def _write_conf(self) -> None:
        settings = dict(DEFAULT_SETTINGS)
        settings.update(self.settings)
        settings["port"] = str(self.port)
        settings["unix_socket_directories"] = f"'{self.basedir}'"
        lines = [f"{k} = {v}" for k, v in settings.items()]
        self._write_server_file("postgresql.auto.conf", "\n".join(lines) + "\n")

    def _write_server_file(self, name: str, text: str) -> None:
        path = self.datadir / name
        path.write_text(text)
        _chown_for_server(path)

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        uid, gid = _run_as()
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=str(self.basedir),
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stdout[-2000:]}")
        return result


def create_cluster(
    *,
    basedir: Path | None = None,
    hba_lines: Iterable[str] = (),
    settings: dict[str, str] | None = None,
    bindir: Path | None = None,
) -> PgCluster:
    """initdb and start a cluster in a fresh temporary directory."""
    if basedir is None:
        basedir = Path(tempfile.mkdtemp(prefix="pgtp-"))
    cluster = PgCluster(
        bindir=bindir or find_bindir(),
        basedir=basedir,
        password=secrets.token_urlsafe(18),
        settings=dict(settings or {}),
    )
    cluster.init(hba_lines)
    cluster.start()
    return cluster
