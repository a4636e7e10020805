"""Every shop to ``tenant_primary``, then some of them ``retired``, by the operator's commands (no load).

The driver tier's :mod:`~tests.integration.drivers.lifecycle` gives the setup
(``provision --all``, ``dual-write enable``, ``backfill --all``, every shop
then ``mirroring``) and the timed command runner; here the moves are done for
all shops at once: ``reads activate`` (the phase keeper then moves them to
``reads_on_tenant``), ``cutover`` (``--check`` and ``--force`` for a shop it
refuses, what an operator would do; printed), then ``retire`` of
:data:`~.shapes.RETIRED`. No statement goes through the proxy between the
cutover and the retirement: the retirement gate blocks a shop the proxies
refused statements of (``readiness_window_s``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from pgtenantproxy.walkthrough.cluster import APP_DB
from tests.integration.drivers.bed import SHOPS, DriverBed
from tests.integration.drivers.lifecycle import LifecycleRun, Move, _setup, _timed
from tests.integration.federation.shapes import PROBE, RETIRED

#: Messages of a refusal that only says the proxy's catalog has not caught up yet.
SETTLING = ("not federated yet", "foreign table", "federat")
SETTLE_S = 20.0


def _shops(shops: tuple[int, ...]) -> list[str]:
    return [arg for shop in shops for arg in ("--shop", str(shop))]


@dataclass
class Migration:
    moves: list[Move] = field(default_factory=list)
    phases: dict[int, str] = field(default_factory=dict)
    forced: list[int] = field(default_factory=list)
    seconds: float = 0.0
    settle: str = ""

    def log(self) -> str:
        lines = [f"migration in {self.seconds:.1f} s; phases: {self.phases}"]
        lines += [f"  `{m.command}` exited {m.returncode} in {m.seconds:.1f} s"
                  + (f": {m.output.strip()[-1500:]}" if m.returncode != 0 or "cutover" in m.command else "")
                  for m in self.moves]
        if self.forced:
            lines.append(f"  cut over with --force: {self.forced}")
        lines.append(f"  settle: {self.settle}")
        return "\n".join(lines)


def _wait(bed: DriverBed, shops: tuple[int, ...], phase: str, timeout_s: float = 30) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        now = bed.phases()
        if all(now[s] == phase for s in shops) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def _run(bed: DriverBed, out: Migration, *args: str) -> Move:
    move = _timed(bed, 0, *args)
    out.moves.append(move)
    print(f"  pgtenantproxy {move.command}: exit {move.returncode} in {move.seconds:.1f} s", flush=True)
    return move


def migrate_and_retire(bed: DriverBed, retired: tuple[int, ...] = RETIRED) -> Migration:
    started = time.monotonic()
    out = Migration()
    run = LifecycleRun()
    try:
        _setup(bed, run)  # provision --all, dual-write enable, backfill --all; every shop mirroring
    finally:
        out.moves += run.setup
    _run(bed, out, "reads", "activate", *_shops(SHOPS))
    now = _wait(bed, SHOPS, "reads_on_tenant")
    if set(now.values()) != {"reads_on_tenant"}:
        raise RuntimeError(f"after reads activate the shops are not all reads_on_tenant: {now}")
    _run(bed, out, "cutover", *_shops(SHOPS), "--json")
    now = _wait(bed, SHOPS, "tenant_primary", timeout_s=5)
    for shop in [s for s in SHOPS if now[s] != "tenant_primary"]:
        check = _run(bed, out, "cutover", "--shop", str(shop), "--check", "--json")
        print(f"  shop {shop} not cut over ({now[shop]}); why: {check.output.strip()[-1500:]}", flush=True)
        _run(bed, out, "cutover", "--shop", str(shop), "--force", "--json")
        out.forced.append(shop)
    now = _wait(bed, SHOPS, "tenant_primary")
    if set(now.values()) != {"tenant_primary"}:
        raise RuntimeError(f"not every shop could be cut over: {now}\n{out.log()}")
    move = _run(bed, out, "retire", *_shops(retired))
    now = _wait(bed, retired, "retired")
    out.phases = now
    if move.returncode != 0 or any(now[s] != "retired" for s in retired):
        raise RuntimeError(f"retire exited {move.returncode}; phases {now}:\n{move.output}")
    out.settle = settle(bed)
    out.seconds = time.monotonic() - started
    return out


def _federation_rows(bed: DriverBed) -> dict[int, str] | None:
    """``pgtenantproxy.federation`` (shop -> signature), None when unreadable."""
    try:
        with psycopg.connect(bed.sandbox.unified.dsn(dbname=APP_DB), autocommit=True) as conn:
            rows = conn.execute("SELECT shop_id, signature FROM pgtenantproxy.federation").fetchall()
    except psycopg.Error:
        return None
    return {int(shop): str(sig) for shop, sig in rows}


def settle(bed: DriverBed, timeout_s: float = SETTLE_S) -> str:
    """Wait (at most ``timeout_s``) until the proxy answers a federated read, or refuses it for a reason
    other than its catalog not having caught up (foreign tables not recorded yet, a refusal saying so)."""
    started = time.monotonic()
    deadline = started + timeout_s
    outcome = ""
    with psycopg.connect(bed.proxied.conninfo(), autocommit=True) as conn:
        while True:
            try:
                count = conn.execute(PROBE).fetchone()
                outcome = f"`{PROBE}` answered {count}"
                waiting = False
            except psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                outcome = f"`{PROBE}` refused: SQLSTATE {exc.sqlstate}: {message}"
                federation = _federation_rows(bed)
                waiting = (exc.sqlstate == "0A000" and any(w in message.lower() for w in SETTLING)) or (
                    federation is not None and len(federation) < len(SHOPS))
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    federation = _federation_rows(bed)
    return (f"after {time.monotonic() - started:.1f} s: {outcome}; pgtenantproxy.federation rows: "
            f"{'unreadable' if federation is None else sorted(federation)}")
