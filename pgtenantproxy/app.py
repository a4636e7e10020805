"""Running the proxy: the parts, their order, signals, reload, graceful shutdown.

:class:`ProxyApp` assembles one proxy instance from a config snapshot:

1. the routing runtime (when ``[[tenant_servers]]`` are listed: control plane,
   catalog with its LISTEN connection, tenant pools, dispatcher);
2. the client listener (:class:`~pgtenantproxy.server.listener.ProxyServer`);
3. metrics (``[metrics] enabled``): the recorder on the dispatcher's data
   path, the Prometheus exporter, the alert check, control-schema gauges;
4. the admin API (``[admin] enabled``, routing on);
5. the config watcher (a config loaded from a file): file edits and SIGHUP
   reload it (:mod:`pgtenantproxy.reload`) and :meth:`ProxyApp.apply_config`
   swaps what can change live.

``serve(config)`` runs it until SIGTERM or SIGINT, then shuts down
gracefully (see :mod:`pgtenantproxy.server.listener`). Write mirroring, when
the caller runs it (``mirror=``), feeds routing (read-your-writes, lag) and
the mirror metrics.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from pgtenantproxy.admin.api import AdminContext
from pgtenantproxy.admin.auth import TokenSet
from pgtenantproxy.admin.server import start_admin
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.metrics.alerting import AlertChecker
from pgtenantproxy.metrics.collector import MetricSources, registry_for
from pgtenantproxy.metrics.control import ControlGauges
from pgtenantproxy.metrics.exporter import MetricsExporter
from pgtenantproxy.metrics.recorder import QueryRecorder
from pgtenantproxy.migration.federation import FederationKeeper
from pgtenantproxy.migration.id_refill import IdBlockRefiller
from pgtenantproxy.migration.keeper import PhaseKeeper
from pgtenantproxy.migration.reference import ReferenceSync
from pgtenantproxy.reload import ConfigReloader, ReloadStats
from pgtenantproxy.server.listener import ProxyServer
from pgtenantproxy.web import WebServer

logger = logging.getLogger(__name__)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        logger.warning("uvloop not available, using the default asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class ProxyApp:
    def __init__(
        self, config: Config, *, mirror: DualWriteService | None = None, watch_config: bool = True
    ) -> None:
        self.config = config
        self.mirror = mirror
        self.watch_config = watch_config
        self.runtime: RoutingRuntime | None = None
        self.server = ProxyServer(config)
        self.recorder: QueryRecorder | None = None
        self.alerts: AlertChecker | None = None
        self.sources = MetricSources(reloads=ReloadStats())
        self.exporter: MetricsExporter | None = None
        self.control: ControlGauges | None = None
        self.admin: WebServer | None = None
        self.admin_context: AdminContext | None = None
        self.reloader: ConfigReloader | None = None
        self._alert_task: asyncio.Task[None] | None = None
        self.keeper: PhaseKeeper | None = None
        self._keeper_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        if config.tenant_servers:
            status = self.mirror.status if self.mirror is not None else None
            self.runtime = await RoutingRuntime.start(config, mirror=status)
        self.server = ProxyServer(config, router=self.runtime.dispatcher if self.runtime else None)
        if self.runtime is not None and self.mirror is not None:
            self._start_keeper(self.runtime, self.mirror)
        if config.metrics.enabled:
            await self._start_metrics()
        await self.server.start()
        if self.runtime is not None and config.admin.enabled:
            self.admin_context = AdminContext(lambda: self.config, self.runtime, self.server,
                                              self.recorder.monitor if self.recorder else None, TokenSet())
            self.admin = await start_admin(config, self.admin_context)
        if config.source and self.watch_config:
            self.reloader = ConfigReloader(
                config.source, config, self.apply_config, stats=self.sources.reloads
            )
            self.reloader.start()

    def _start_keeper(self, runtime: RoutingRuntime, mirror: DualWriteService) -> None:
        """Automatic phase moves (one leader among the proxy instances); the leader keeps one connection
        of the mirror's pool (sized for its workers plus a few), not of the runtime's small one. While it
        leads it also refills id blocks, keeps cut-over shops' foreign tables in step and every shop's
        reference copies current."""
        self.keeper = PhaseKeeper(mirror.tenancy.pool, mirror.status, runtime.dispatcher.selects,
                                  interval_s=self.config.migration.keeper_interval_ms / 1000,
                                  refiller=IdBlockRefiller(mirror.tenancy, lambda: self.config),
                                  jobs=[("federation refresh", FederationKeeper(mirror.tenancy,
                                                                                lambda: self.config)),
                                        ("reference sync", ReferenceSync(mirror.tenancy,
                                                                         lambda: self.config))])
        self._keeper_task = asyncio.get_running_loop().create_task(self.keeper.run(), name="phase-keeper")

    async def _start_metrics(self) -> None:
        config, runtime, sources = self.config, self.runtime, self.sources
        sources.server = self.server
        sources.runtime = runtime
        sources.mirror = self.mirror.stats if self.mirror is not None else None
        if runtime is not None:
            catalog = runtime.catalog
            self.recorder = QueryRecorder(
                config.metrics, tenant_tables=lambda: catalog.snapshot.tenant_tables,
                fingerprint=runtime.fingerprint,
            )
            runtime.dispatcher.metrics = self.recorder
            self.alerts = AlertChecker.from_config(config.metrics)
            self._alert_task = asyncio.get_running_loop().create_task(self._check_alerts(), name="alerts")
            self.control = ControlGauges(runtime.tenancy.pool, reference_tables=lambda: [
                r.table for r in self.config.tenancy.reference_tables])
            self.control.start()
        sources.recorder, sources.alerts, sources.control = self.recorder, self.alerts, self.control
        self.exporter = MetricsExporter(registry_for(sources), config.metrics.listen)
        await self.exporter.start()

    async def _check_alerts(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics.alert_interval_ms / 1000)
            if self.alerts is not None and self.recorder is not None:
                self.alerts.check(self.recorder.monitor)

    # --- live reload ---------------------------------------------------------------------
    def apply_config(self, new: Config) -> None:
        """Swap in a validated config (restart-only keys are logged by the reloader, not applied)."""
        old = self.config
        if self.runtime is not None:
            self.runtime.apply_config(new)
        self.server.config = new
        if self.recorder is not None:
            self.recorder.configure(new.metrics)
        if self.alerts is not None:
            self.alerts.configure(new.metrics)
        if new.logging.level != old.logging.level:
            logging.getLogger().setLevel(new.logging.level.upper())
        self.config = new

    def reload_now(self, why: str = "SIGHUP") -> None:
        if self.reloader is None:
            logger.warning("%s: no config file to reload (the config did not come from a file)", why)
            return
        self.reloader.trigger(why)

    # --- shutdown -----------------------------------------------------------------------
    async def stop(self, timeout: float | None = None) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self.admin_context is not None:
            await self.admin_context.jobs.close()
        if self._alert_task is not None:
            self._alert_task.cancel()
            await asyncio.gather(self._alert_task, return_exceptions=True)
            self._alert_task = None
        if self.keeper is not None and self._keeper_task is not None:
            self.keeper.stop()
            await asyncio.gather(self._keeper_task, return_exceptions=True)
            self.keeper = self._keeper_task = None
        await self.server.shutdown(timeout)
        if self.exporter is not None:
            await self.exporter.stop()
        if self.control is not None:
            await self.control.stop()
        if self.runtime is not None:
            await self.runtime.stop()
            self.runtime = None


async def run_proxy(
    config: Config, *, ready: Callable[[ProxyServer], Awaitable[None] | None] | None = None
) -> None:
    """Start the proxy and serve until a termination signal (SIGHUP reloads the config).

    With routing on, write mirroring runs in the proxy too: its status feeds
    routing (read-your-writes, lag, degraded shops) and, with ``[dual_write]
    run_worker``, its worker mirrors the outbox.
    """
    mirror = await DualWriteService.open(config) if config.tenant_servers else None
    if mirror is not None:
        await mirror.start()
    app = ProxyApp(config, mirror=mirror)
    try:
        await app.start()
    except BaseException:
        if mirror is not None:
            await mirror.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_now, "SIGHUP")
    try:
        if ready is not None:
            result = ready(app.server)
            if result is not None:
                await result
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await app.stop()
        if mirror is not None:
            await mirror.close()


def serve(config: Config) -> None:
    install_uvloop()
    asyncio.run(run_proxy(config))
