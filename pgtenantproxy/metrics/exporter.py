"""``GET /metrics`` on ``[metrics] listen``: the Prometheus text exposition, served on the proxy's loop.

Served by aiohttp on the proxy's own event loop (not prometheus-client's
thread server), so the collector reads the data path's counters without
any lock. A port that cannot be bound is logged as an error and the proxy
keeps serving clients: losing metrics must not take the data path down.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from pgtenantproxy.web import WebServer, serve

logger = logging.getLogger(__name__)


class MetricsExporter:
    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        self.listen = listen
        self.server: WebServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        return app

    async def start(self) -> bool:
        try:
            self.server = await serve(self.app(), self.listen)
        except OSError as exc:
            logger.error("metrics: cannot listen on %s (%s); the proxy runs without /metrics",
                         self.listen, exc.strerror or exc)
            return False
        logger.info("metrics on %s/metrics", self.server.url)
        return True

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="pgtenantproxy metrics: /metrics\n")
