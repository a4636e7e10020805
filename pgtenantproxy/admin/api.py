"""The admin HTTP API (aiohttp), on ``[admin] listen``, in the proxy's own event loop.

Routes (documented in :mod:`.openapi`): ``/healthz``, ``/readyz`` and
``/api/openapi.json`` answer anyone; everything under
``/api/superadmin/`` needs ``Authorization: Bearer <token>`` when tokens are
configured (:mod:`.auth`), else 401 with ``WWW-Authenticate: Bearer``. The
caller (token name, and the peer address) is what the audit log records.
Errors are JSON ``{"error": ...}``: 400 for a malformed request, 500 when
the action failed (also audited, status ``failed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pgtenantproxy.admin import actions
from pgtenantproxy.admin.auth import TokenSet
from pgtenantproxy.admin.jobs import Job, JobBook
from pgtenantproxy.admin.openapi import PREFIX, document
from pgtenantproxy.admin.report import gather_status
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.routing_state import RoutingState
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.lifecycle.phases import ShopPhase
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.metrics.monitor import PerformanceMonitor
from pgtenantproxy.server.listener import ProxyServer

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AdminContext:
    config: Callable[[], Config]
    runtime: RoutingRuntime
    server: ProxyServer | None
    monitor: PerformanceMonitor | None
    tokens: TokenSet
    jobs: JobBook = field(default_factory=JobBook)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _actor(ctx: AdminContext, request: web.Request) -> str | None:
    """Who is calling (``name@address``, for the audit log), or None without a valid token."""
    if ctx.tokens.required:
        name = ctx.tokens.identify(request.headers.get("Authorization"))
        if name is None:
            return None
    else:
        name = "anonymous"
    return f"{name}@{request.remote or '?'}"


def build_app(ctx: AdminContext) -> web.Application:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/superadmin/"):
            return await handler(request)
        if _actor(ctx, request) is None:
            logger.warning("admin API: refused %s %s from %s (no valid bearer token)",
                           request.method, request.path, request.remote)
            response = _error(401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="pgtenantproxy"'
            return response
        return await handler(request)

    app = web.Application(middlewares=[authenticate])
    api = _Handlers(ctx)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/api/openapi.json", api.openapi)
    app.router.add_get(f"{PREFIX}/status", api.status)
    app.router.add_get(f"{PREFIX}/performance", api.performance)
    app.router.add_post(f"{PREFIX}/provision-all", api.provision_all)
    app.router.add_post(f"{PREFIX}/enable-dual-write", api.enable_dual_write)
    app.router.add_post(f"{PREFIX}/disable-dual-write", api.disable_dual_write)
    app.router.add_post(f"{PREFIX}/activate-reads", api.activate_reads)
    app.router.add_post(f"{PREFIX}/rollback-reads", api.rollback_reads)
    app.router.add_post(f"{PREFIX}/use-config-strategy", api.use_config_strategy)
    app.router.add_get(f"{PREFIX}/phases", api.phases)
    app.router.add_post(f"{PREFIX}/migrate-data", api.migrate_data)
    app.router.add_post(f"{PREFIX}/verify-sync", api.verify_sync)
    app.router.add_post(f"{PREFIX}/cutover", api.cutover)
    app.router.add_get(f"{PREFIX}/cutover-check", api.cutover_check)
    app.router.add_post(f"{PREFIX}/rollback", api.rollback)
    app.router.add_post(f"{PREFIX}/retire-legacy", api.retire_legacy)
    app.router.add_post(f"{PREFIX}/restore", api.restore)
    app.router.add_get(f"{PREFIX}/jobs", api.jobs)
    app.router.add_get(f"{PREFIX}/jobs/{{job_id}}", api.job)
    return app


class _Handlers:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    # --- open endpoints ---------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        server, catalog = self.ctx.server, self.ctx.runtime.catalog
        checks = {
            "listening": server is not None and not server.shutting_down,
            "catalog_loaded": catalog.refreshes > 0,
            "catalog_fresh": catalog.failures == 0,
        }
        ready = all(checks.values())
        return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                                 status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document())

    # --- reads ------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        async with self.ctx.runtime.tenancy.pool.acquire() as conn:
            report = await gather_status(conn, self.ctx.config())
        return web.json_response(report.as_dict())

    async def performance(self, request: web.Request) -> web.Response:
        monitor = self.ctx.monitor
        if monitor is None:
            return _error(404, "metrics are off ([metrics] enabled = false)")
        shop = request.query.get("shop")
        if shop is not None and not shop.isdigit():
            return _error(400, "shop must be a shop id")
        return web.json_response(monitor.report(int(shop) if shop is not None else None))

    async def phases(self, request: web.Request) -> web.Response:
        async with self.ctx.runtime.tenancy.pool.acquire() as conn:
            records = await read_phases(conn)
        return web.json_response({"shops": [_phase_dict(r) for r in records.values()]})

    async def jobs(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": [j.as_dict() for j in self.ctx.jobs.all()]})

    async def job(self, request: web.Request) -> web.Response:
        raw = request.match_info["job_id"]
        job = self.ctx.jobs.get(int(raw)) if raw.isdigit() else None
        if job is None:
            return _error(404, f"no job {raw} in this proxy instance")
        return web.json_response(job.as_dict())

    # --- migration jobs ---------------------------------------------------------------
    async def migrate_data(self, request: web.Request) -> web.Response:
        return await self._job(request, "migrate-data", actions.parse_backfill, actions.migrate_data)

    async def verify_sync(self, request: web.Request) -> web.Response:
        return await self._job(request, "verify-sync", actions.parse_shops, actions.verify_sync)

    async def cutover(self, request: web.Request) -> web.Response:
        return await self._job(request, "cutover", actions.parse_cutover, actions.cutover)

    async def rollback(self, request: web.Request) -> web.Response:
        return await self._job(request, "rollback", actions.parse_some_shops, actions.rollback)

    async def retire_legacy(self, request: web.Request) -> web.Response:
        return await self._job(request, "retire-legacy", actions.parse_retire, actions.retire_legacy)

    async def restore(self, request: web.Request) -> web.Response:
        return await self._job(request, "restore", actions.parse_some_shops, actions.restore)

    async def cutover_check(self, request: web.Request) -> web.Response:
        raw = request.query.getall("shop", [])
        if not raw or not all(s.isdigit() for s in raw):
            return _error(400, "give ?shop=N (repeatable)")
        return web.json_response(await actions.cutover_check(self.ctx.runtime, [int(s) for s in raw]))

    async def _job(
        self, request: web.Request, name: str, parse: Callable[[dict[str, Any]], object],
        run: Callable[[RoutingRuntime, Config, dict[str, Any], str, Job], Awaitable[dict[str, Any]]],
    ) -> web.Response:
        """Start ``run`` as a job (202 + its URL), or wait for it with ``"wait": true`` (200/409)."""
        actor = _actor(self.ctx, request) or "?"
        try:
            body = await _body(request)
            parse(body)  # a malformed request is refused before anything starts
        except actions.BadRequest as exc:
            return _error(400, str(exc))
        runtime, config = self.ctx.runtime, self.ctx.config()
        job = self.ctx.jobs.start(name, actor, body, lambda j: run(runtime, config, body, actor, j))
        logger.info("admin API: %s by %s started as job %d", name, actor, job.id)
        if body.get("wait") is True:
            assert job.task is not None
            await asyncio.shield(job.task)
            return web.json_response(job.as_dict(), status=200 if job.state == "done" else 409)
        response = web.json_response(job.as_dict(), status=202)
        response.headers["Location"] = f"{PREFIX}/jobs/{job.id}"
        return response

    # --- actions ----------------------------------------------------------------------
    async def provision_all(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            concurrency = body.get("concurrency")
            if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
                raise actions.BadRequest("concurrency must be a positive integer")
            return await actions.provision_all(self.ctx.runtime, actor, concurrency)
        return await self._act(request, "provision-all", run)

    async def enable_dual_write(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            return await actions.dual_write(self.ctx.runtime, self.ctx.config(), actor, enable=True)
        return await self._act(request, "enable-dual-write", run)

    async def disable_dual_write(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            return await actions.dual_write(self.ctx.runtime, self.ctx.config(), actor, enable=False)
        return await self._act(request, "disable-dual-write", run)

    async def activate_reads(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            state = actions.parse_activation(body)
            return await actions.set_reads(self.ctx.runtime, state, "activate-reads", actor)
        return await self._act(request, "activate-reads", run)

    async def rollback_reads(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            return await actions.set_reads(self.ctx.runtime, RoutingState("unified"), "rollback-reads", actor)
        return await self._act(request, "rollback-reads", run)

    async def use_config_strategy(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any], actor: str) -> dict[str, Any]:
            return await actions.use_config_strategy(self.ctx.runtime, actor)
        return await self._act(request, "use-config-strategy", run)

    async def _act(
        self, request: web.Request, name: str,
        run: Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]],
    ) -> web.Response:
        actor = _actor(self.ctx, request) or "?"  # the middleware let only valid callers in
        try:
            body = await _body(request)
            answer = await run(body, actor)
        except actions.BadRequest as exc:
            return _error(400, str(exc))
        except Exception as exc:
            logger.exception("admin API: %s by %s failed", name, actor)
            message = f"{name} failed: {exc.__class__.__name__}: {exc}"
            try:
                await actions.record(self.ctx.runtime, name, actor, "failed", error=message)
            except Exception:
                logger.exception("admin API: could not write the audit row of a failed %s", name)
            return _error(500, message)
        logger.info("admin API: %s by %s", name, actor)
        return web.json_response(answer)


def _phase_dict(record: ShopPhase) -> dict[str, Any]:
    return {"shop_id": record.shop_id, "phase": record.phase, "version": record.version,
            "resume_phase": record.resume_phase, "reason": record.reason, "actor": record.actor,
            "changed_at": record.changed_at.isoformat() if record.changed_at else None}


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise actions.BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise actions.BadRequest("the body must be a JSON object")
    return body
