"""What the admin API's POST endpoints do, each written to the audit log with who asked.

Each action runs against the control plane and appends one row to
``pgtenantproxy.migration_log`` (action ``api:<name>``, status ``ok`` or
``failed``, the request's parameters and outcome in ``detail``, the caller
in ``actor``). Routing changes (:func:`set_reads`, :func:`use_config_strategy`)
write the state and its audit row in one transaction; the table's trigger
notifies every proxy instance, and this instance applies the change before
answering, so the response already reflects it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pgtenantproxy.admin.jobs import Job
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.routing_state import RoutingState, clear_state, write_state
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import CutoverContext, cutover_shops
from pgtenantproxy.migration.cutover_report import FenceReport
from pgtenantproxy.migration.progress import CHUNK, ESTIMATE, SHOP_STARTED, ProgressEvent
from pgtenantproxy.migration.readiness import readiness
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.rollback import rollback_shops
from pgtenantproxy.migration.verify import verify_shops


class BadRequest(ValueError):
    """The request is malformed; the message says why (HTTP 400)."""


def _detail(**values: Any) -> str:
    return json.dumps(values, sort_keys=True, default=str)


async def record(runtime: RoutingRuntime, action: str, actor: str, status: str, **detail: Any) -> None:
    await audit(runtime.tenancy.pool, shop_id=None, action=f"api:{action}", status=status,
                detail=_detail(**detail), actor=actor)


def parse_activation(body: dict[str, Any]) -> RoutingState:
    """``{"percentage": N}``, ``{"shop_ids": [...]}`` (with ``"strategy": "canary"`` for the canary
    list) or ``{"strategy": "tenant"}`` into the state to store."""
    known = {"percentage", "shop_ids", "strategy"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    strategy = body.get("strategy")
    if "percentage" in body:
        value = body["percentage"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise BadRequest("percentage must be an integer between 0 and 100")
        if strategy not in (None, "percentage") or "shop_ids" in body:
            raise BadRequest("give either percentage or shop_ids")
        return RoutingState("percentage", percentage=value)
    if "shop_ids" in body:
        shops = body["shop_ids"]
        if not isinstance(shops, list) or not shops or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shops
        ):
            raise BadRequest("shop_ids must be a non-empty list of positive shop ids")
        if strategy not in (None, "shop-list", "canary"):
            raise BadRequest('with shop_ids, strategy must be "shop-list" (default) or "canary"')
        return RoutingState(strategy or "shop-list", shop_ids=tuple(sorted(set(shops))))
    if strategy == "tenant":
        return RoutingState("tenant")
    raise BadRequest('give "percentage", "shop_ids", or "strategy": "tenant"')


async def set_reads(runtime: RoutingRuntime, state: RoutingState, action: str, actor: str) -> dict[str, Any]:
    state = dataclasses.replace(state, source="api", actor=actor)
    async with runtime.tenancy.pool.acquire() as conn, conn.transaction():
        await write_state(conn, state)
        await audit(conn, shop_id=None, action=f"api:{action}", status="ok", actor=actor,
                    detail=_detail(strategy=state.strategy, percentage=state.percentage,
                                   shop_ids=list(state.shop_ids)))
    await runtime.refresh_now()
    return _strategy_answer(runtime)


async def use_config_strategy(runtime: RoutingRuntime, actor: str) -> dict[str, Any]:
    async with runtime.tenancy.pool.acquire() as conn, conn.transaction():
        had = await clear_state(conn)
        await audit(conn, shop_id=None, action="api:use-config-strategy", status="ok", actor=actor,
                    detail=_detail(cleared=had, config_strategy=runtime.config.routing.strategy))
    await runtime.refresh_now()
    return _strategy_answer(runtime)


def _strategy_answer(runtime: RoutingRuntime) -> dict[str, Any]:
    now = runtime.effective()
    answer: dict[str, Any] = {"strategy": now.as_dict()}
    if not now.enable_tenant_reads and now.name != "unified":
        answer["warning"] = "[routing] enable_tenant_reads is false here: every read still goes to unified"
    return answer


async def provision_all(runtime: RoutingRuntime, actor: str, concurrency: int | None) -> dict[str, Any]:
    service = runtime.tenancy
    shops = await service.all_shop_ids()
    outcomes = await service.provision_many(shops, concurrency=concurrency)
    failed = [{"shop_id": o.shop_id, "error": o.error} for o in outcomes if not o.ok]
    answer = {
        "ok": not failed,
        "shops": len(shops),
        "provisioned": sum(1 for o in outcomes if o.status == "provisioned"),
        "already": sum(1 for o in outcomes if o.status == "already"),
        "failed": failed,
    }
    await record(runtime, "provision-all", actor, "ok" if not failed else "failed",
                 shops=len(shops), provisioned=answer["provisioned"], already=answer["already"],
                 failed=[f["shop_id"] for f in failed])
    await runtime.refresh_now()
    return answer


async def dual_write(runtime: RoutingRuntime, config: Config, actor: str, *, enable: bool) -> dict[str, Any]:
    # Opened without [dual_write] enabled, so that opening never installs capture by itself.
    quiet = dataclasses.replace(config, dual_write=dataclasses.replace(config.dual_write, enabled=False))
    service = await DualWriteService.open(quiet, run_worker=False)
    try:
        if enable:
            tables = [t.label for t in await service.enable()]
        else:
            tables = [str(t) for t in await service.disable()]
    finally:
        await service.close()
    name = "enable-dual-write" if enable else "disable-dual-write"
    await record(runtime, name, actor, "ok", tables=tables)
    return {"ok": True, "capture": enable, "tables": tables}


# --- migration jobs (run by :mod:`.jobs`) ---------------------------------------------
def parse_shops(body: dict[str, Any]) -> list[int] | None:
    """``{"shop_ids": [...]}``, ``{"shop_id": N}`` or ``{"all": true}`` (None: every eligible shop)."""
    if body.get("all") is True:
        if "shop_ids" in body or "shop_id" in body:
            raise BadRequest('give either "all": true or shop ids, not both')
        return None
    if "shop_id" in body:
        body = {**body, "shop_ids": [body["shop_id"]]}
    shops = body.get("shop_ids")
    if (not isinstance(shops, list) or not shops
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shops)):
        raise BadRequest('give "shop_ids": [positive integers], "shop_id": N or "all": true')
    return shops


def _positive(body: dict[str, Any], key: str, *, zero: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise BadRequest(f"{key} must be a {'non-negative' if zero else 'positive'} integer")
    return value


def parse_backfill(body: dict[str, Any]) -> tuple[list[int] | None, int | None, int | None]:
    """``(shops, jobs, throttle rows/s)`` of a migrate-data request."""
    return parse_shops(body), _positive(body, "jobs"), _positive(body, "throttle_rows_per_s", zero=True)


async def migrate_data(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops, jobs, throttle = parse_backfill(body)
    progress: dict[int, dict[str, int]] = {}
    job.progress = {"shops": progress}

    def follow(event: ProgressEvent) -> None:
        shop = progress.setdefault(event.shop_id, {"rows_done": 0, "rows_total": 0})
        if event.kind in (SHOP_STARTED, ESTIMATE):
            shop["rows_total"] = event.rows_total
            shop["rows_done"] = max(shop["rows_done"], event.rows_done)
        elif event.kind == CHUNK:
            shop["rows_done"] += event.rows

    report = await backfill_shops(runtime.tenancy, shops, config=config, jobs=jobs, throttle=throttle,
                                  progress=follow, wait=True, actor=actor)
    answer = report.as_dict()
    await record(runtime, "migrate-data", actor, "ok" if report.ok else "failed",
                 shops=shops or "all", outcome={r.shop_id: r.status for r in report.shops})
    return answer


async def verify_sync(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops = parse_shops(body)
    report = await verify_shops(runtime.tenancy, shops, config=config, actor=actor)
    await record(runtime, "verify-sync", actor, "ok", shops=shops or "all",
                 identical=report.identical)
    return report.as_dict()


def parse_cutover(body: dict[str, Any]) -> tuple[list[int] | None, int | None, bool]:
    """``(shops, percentage, force)``: ``{"shop_ids": [...]}`` or ``{"percentage": P}``, ``"force"``."""
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false")
    if "percentage" in body:
        p = body["percentage"]
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 100:
            raise BadRequest("percentage must be an integer between 0 and 100")
        if "shop_ids" in body or "shop_id" in body:
            raise BadRequest('give either "percentage" or shop ids, not both')
        return None, p, force
    shops = parse_shops(body)
    if shops is None:
        raise BadRequest('give "shop_ids" or "percentage" ("all" is not allowed here)')
    return shops, None, force


def parse_some_shops(body: dict[str, Any]) -> list[int]:
    shops = parse_shops(body)
    if shops is None:
        raise BadRequest('give "shop_ids" or "shop_id" ("all" is not allowed here)')
    return shops


def parse_retire(body: dict[str, Any]) -> tuple[list[int] | None, bool, bool]:
    """``(shops, dry_run, force)``: ``{"shop_ids": [...]}`` or ``{"all": true}``; ``dry_run``, ``force``."""
    dry_run, force = body.get("dry_run", False), body.get("force", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false")
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false")
    return parse_shops(body), dry_run, force


async def cutover(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops, percentage, force = parse_cutover(body)
    report = await cutover_shops(runtime.tenancy, shops, percentage=percentage, config=config, force=force,
                                 actor=actor)
    await record(runtime, "cutover", actor, "ok" if report.ok else "failed", shops=shops or percentage,
                 outcome={r.shop_id: r.status for r in report.shops})
    return report.as_dict()


async def rollback(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops = parse_some_shops(body)
    results = await rollback_shops(CutoverContext(runtime.tenancy, config, actor=actor), shops)
    report = FenceReport("rollback", results)
    await record(runtime, "rollback", actor, "ok" if report.ok else "failed", shops=shops,
                 outcome={r.shop_id: f"{r.status}: {r.phase}" for r in results})
    return report.as_dict()


async def retire_legacy(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops, dry_run, force = parse_retire(body)
    report = await retire_shops(runtime.tenancy, shops, config=config, dry_run=dry_run, force=force,
                                actor=actor)
    answer = report.as_dict()
    await record(runtime, "retire-legacy", actor, "ok", shops=shops or "all", dry_run=dry_run, force=force)
    return answer


async def restore(
    runtime: RoutingRuntime, config: Config, body: dict[str, Any], actor: str, job: Job
) -> dict[str, Any]:
    shops = parse_some_shops(body)
    restored = [(await restore_shop(runtime.tenancy, shop, config=config, actor=actor)).as_dict()
                for shop in shops]
    await record(runtime, "restore", actor, "ok", shops=shops)
    return {"shops": restored}


async def cutover_check(runtime: RoutingRuntime, shops: list[int]) -> dict[str, Any]:
    found = await readiness(runtime.tenancy.pool, shops, tenancy=runtime.config.tenancy,
                            window_s=runtime.config.migration.readiness_window_s)
    return {"shops": [r.as_dict() for r in found.values()]}
