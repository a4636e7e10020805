"""The walkthrough from start to end: clusters, proxy, load, the steps, the final check, cleanup.

Order: start both clusters (:mod:`.cluster`), load the sample, open write
mirroring and start the whole proxy in this process as
:func:`pgtenantproxy.app.run_proxy` does (a :class:`DualWriteService` with its
worker, then ``ProxyApp(config, mirror=...)``, which also runs the phase
keeper), start the load (:mod:`.workload`), then run each step of
:func:`.steps.walkthrough_steps`: heading, what it does, the action's outcome,
a pause under load, the figures. The end: stop the load, wait for the mirror
to drain (forward, and reverse for the shops in ``tenant_primary``), verify
every shop, print the totals.

Exit status: 0 when every step succeeded, every shop verified identical and
no query failed; 1 otherwise (saying what went wrong); 130 after Ctrl-C
(143 after SIGTERM). Whatever happens, the proxy stops and both clusters are
removed; secrets are never printed (:mod:`.cluster`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from pgtenantproxy.app import ProxyApp, install_uvloop
from pgtenantproxy.dualwrite.reverse import connect_tenant_admin, wait_reverse_drained
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.migration.verify_report import VerificationReport
from pgtenantproxy.walkthrough.cluster import APP_DB, APP_USER, Sandbox, load_sample, start_clusters
from pgtenantproxy.walkthrough.context import ACTOR, StepFailed, Walk
from pgtenantproxy.walkthrough.figures import read_split, render
from pgtenantproxy.walkthrough.steps import Step, walkthrough_steps
from pgtenantproxy.walkthrough.workload import Workload

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Options:
    shops: int = 10
    fast: bool = False
    port: int = 0  # 0: any free port

    @property
    def customers_per_shop(self) -> int:
        return 100 if self.fast else 1000


def run_walkthrough(options: Options, console: Console | None = None) -> int:
    console = console or make_console()
    console.print(Rule("pgtenantproxy walkthrough"))
    console.print(f"Starting two throwaway PostgreSQL clusters (unified and a tenant server) for "
                  f"{options.shops} shops...")
    try:
        unified, tenant = start_clusters()
    except KeyboardInterrupt:
        console.print("interrupted; nothing left behind")
        return 130
    sandbox = Sandbox(unified, tenant, tuple(range(1, options.shops + 1)))
    console.print(f"unified on 127.0.0.1:{unified.port} (data in {unified.basedir})\n"
                  f"tenant server on 127.0.0.1:{tenant.port} (data in {tenant.basedir})", soft_wrap=True,
                  markup=False)
    try:
        install_uvloop()
        return asyncio.run(_main(sandbox, options, console))
    except KeyboardInterrupt:
        console.print("interrupted: the walkthrough stopped")
        return 130
    except asyncio.CancelledError:  # SIGTERM (see _terminate_on_sigterm)
        console.print("terminated: the walkthrough stopped")
        return 143
    except Exception as exc:  # say what went wrong in one line; the traceback with --log-level debug
        logger.debug("walkthrough failed", exc_info=True)
        console.print(f"[bold red]walkthrough failed:[/] {type(exc).__name__}: {escape(str(exc))}")
        return 1
    finally:
        sandbox.destroy()
        console.print("throwaway clusters removed")


def make_console() -> Console:
    """A console that also reads well when captured (no colour codes, a fixed comfortable width)."""
    return Console(highlight=False, width=None if os.isatty(1) else 120)


def quiet_logging() -> None:
    """Warnings and errors only: the walkthrough's own lines tell the story."""
    logging.getLogger().setLevel(logging.WARNING)


async def _main(sandbox: Sandbox, options: Options, console: Console) -> int:
    _terminate_on_sigterm()
    sandbox.export_secrets()
    counts = await load_sample(sandbox, customers_per_shop=options.customers_per_shop)
    console.print("HandyShop sample loaded: " + ", ".join(f"{n:,} {t}" for t, n in counts.items()))
    config = sandbox.config(port=options.port, fast=options.fast)
    mirror = await DualWriteService.open(config)
    try:
        await mirror.start()
        app = ProxyApp(config, mirror=mirror, watch_config=False)
        try:
            await app.start()
            return await _walk(sandbox, options, console, app, mirror, counts)
        finally:
            await app.stop(2.0)
    finally:
        await mirror.close()


def _terminate_on_sigterm() -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def terminate() -> None:
        if main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)


async def _walk(sandbox: Sandbox, options: Options, console: Console, app: ProxyApp,
                mirror: DualWriteService, sample: dict[str, int]) -> int:
    host, port = app.server.sockets_addresses[0][:2]
    passfile = _write_passfile(sandbox, port)
    console.print(f"The proxy listens on {host}:{port}. To look around meanwhile:\n"
                  f"  PGPASSFILE={passfile} psql 'host={host} port={port} user={APP_USER} dbname={APP_DB}'",
                  soft_wrap=True, markup=False)
    workload = Workload(sandbox.app_connect_kwargs(port), sandbox.shops)
    await workload.start()
    try:
        walk = Walk(app.config, app, mirror, workload, console, sandbox.shops, fast=options.fast,
                    sample=sample)
        steps = walkthrough_steps()
        try:
            for n, step in enumerate(steps, 1):
                await run_step(walk, step, n, len(steps))
        except StepFailed as exc:
            await workload.stop()
            console.print(f"[bold red]step failed:[/] {escape(str(exc))}")
            _totals(console, walk)
            return 1
        return await finish(walk)
    finally:
        await workload.stop()


async def run_step(walk: Walk, step: Step, n: int, count: int) -> None:
    walk.console.print()
    walk.console.print(Rule(f"Step {n}/{count}: {step.title}", align="left"))
    walk.console.print(step.explain, markup=False)
    outcome = await step.action(walk)
    walk.console.print(f"[green]done:[/] {escape(outcome)}")
    walk.figures.mark()
    await walk.pause(step.pause_s)
    render(walk.console, await walk.figures.take())


async def finish(walk: Walk) -> int:
    """Stop the load, let the mirror drain, verify every shop; 0 when all is identical and nothing failed."""
    console = walk.console
    console.print()
    console.print(Rule("The end: stop the load, drain the mirror, verify every shop", align="left"))
    await walk.workload.stop()
    drained = await walk.mirror.wait_drained(timeout_s=DRAIN_TIMEOUT_S)
    console.print("mirror drained: nothing left in the outbox" if drained
                  else f"[red]the mirror did not drain within {DRAIN_TIMEOUT_S:.0f}s[/]")
    drained = await _reverse_drained(walk) and drained
    try:
        report = await verify_shops(walk.tenancy, walk.shops, config=walk.config, actor=ACTOR)
    except MigrationError as exc:
        console.print(f"[bold red]the final verification was refused:[/] {escape(str(exc))}")
        return 1
    console.print(_verification_table(report))
    _totals(console, walk)
    failed = walk.workload.counters.failed
    if drained and report.identical and failed == 0:
        console.print(f"[bold green]Every shop verified identical: {report.rows:,} rows. "
                      f"0 failed queries.[/]")
        return 0
    problems = [] if drained else ["the mirror (forward or reverse) did not drain"]
    if not report.identical:
        problems.append("shops differ: " + ", ".join(str(s.shop_id) for s in report.shops if not s.identical))
    if failed:
        problems.append(f"{failed} failed queries")
    console.print("[bold red]Something went wrong:[/] " + escape("; ".join(problems)))
    return 1


async def _reverse_drained(walk: Walk) -> bool:
    """Wait for the reverse mirror of every shop in tenant_primary: unified must hold all they wrote."""
    primary = [shop for shop, phase in (await walk.phases()).items() if phase == ph.TENANT_PRIMARY]
    stuck = []
    for shop in primary:
        tenant = await connect_tenant_admin(walk.tenancy.registry, walk.tenancy.servers, shop)
        try:
            if not await wait_reverse_drained(tenant, shop, timeout_s=DRAIN_TIMEOUT_S):
                stuck.append(shop)
        finally:
            await tenant.close()
    if stuck:
        walk.console.print(f"[red]the reverse mirror of shops {', '.join(map(str, stuck))} did not drain "
                           f"within {DRAIN_TIMEOUT_S:.0f}s[/]")
    elif primary:
        walk.console.print(f"reverse mirror drained: unified holds every write of the {len(primary)} shops "
                           "in tenant_primary")
    return not stuck


def _verification_table(report: VerificationReport) -> Table:
    table = Table("shop", "phase", "tables", "rows unified", "rows tenant", "result", title_justify="left")
    for shop in report.shops:
        table.add_row(str(shop.shop_id), shop.phase, str(len(shop.tables)),
                      f"{sum(t.rows_unified for t in shop.tables):,}",
                      f"{sum(t.rows_tenant for t in shop.tables):,}", shop.status)
    return table


def _totals(console: Console, walk: Walk) -> None:
    c = walk.workload.counters
    tenant, unified, fallback = read_split(walk.runtime.dispatcher.stats)
    console.print(f"totals: {c.queries:,} queries ({c.reads:,} reads, {c.writes:,} writes), "
                  f"{c.failed} failed; shop reads: {unified:,} on unified, {tenant:,} on tenant, "
                  f"{fallback} fallbacks")
    for error in c.errors:
        console.print(f"  failure: {error}", markup=False)


def _write_passfile(sandbox: Sandbox, port: int) -> Path:
    """The app's password for psql, in a private file inside the throwaway directory (removed at the end)."""
    path = sandbox.unified.basedir / "walkthrough.pgpass"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"127.0.0.1:{port}:{APP_DB}:{APP_USER}:{sandbox.app_password}\n")
    return path
