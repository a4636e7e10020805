"""The admin API's OpenAPI 3.1 document, served at ``/api/openapi.json`` and kept in ``docs/openapi.json``.

Built here, next to the routes, so one test can hold the three together:
every route the application registers is documented, and the stored copy
equals :func:`document` (regenerate it with ``python -m pgtenantproxy.admin.openapi``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pgtenantproxy import __version__

PREFIX = "/api/superadmin/migration"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_ERRORS = {
    "400": _answer("Malformed request", _ref("Error")),
    "401": _answer("Missing or wrong bearer token", _ref("Error")),
    "500": _answer("The action failed (the audit log has it too)", _ref("Error")),
}


def _op(summary: str, answer: dict[str, Any], *, body: dict[str, Any] | None = None,
        auth: bool = True, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": answer}}
    if auth:
        op["responses"].update(_ERRORS)
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": False, "content": {JSON: {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _job(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    op = _op(summary, _answer('finished job (with "wait": true; 409 when it failed)', _ref("Job")), body=body)
    op["responses"]["202"] = _answer("job started; follow the Location header", _ref("Job"))
    return op


def _schemas() -> dict[str, Any]:
    integers = {"type": "array", "items": {"type": "integer"}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Strategy": {
            "type": "object",
            "properties": {
                "name": {"enum": ["unified", "tenant", "percentage", "shop-list", "canary"]},
                "percentage": {"type": "integer"}, "shop_ids": integers, "canary_shop_ids": integers,
                "enable_tenant_reads": {"type": "boolean"},
                "source": {"enum": ["config", "api"],
                           "description": "where the effective strategy comes from"},
                "set_by": {"type": ["string", "null"]}, "set_at": {"type": ["string", "null"]},
                "config_file": {"type": ["string", "null"]},
            },
        },
        "StrategyAnswer": {"type": "object", "properties": {"strategy": _ref("Strategy"),
                                                            "warning": {"type": "string"}}},
        "ShopStatus": {
            "type": "object",
            "properties": {
                "shop_id": {"type": "integer"}, "server": {"type": ["string", "null"]},
                "state": {"type": "string"}, "reads": {"enum": ["tenant", "unified"]},
                "reason": {"type": "string"}, "override": {"type": ["string", "null"]},
                "mirror_queue": {"type": "integer"}, "mirror_lag_seconds": {"type": "number"},
                "dead_letters": {"type": "integer"}, "degraded": {"type": "boolean"},
                "phase": _ref("PhaseName"), "phase_reason": {"type": ["string", "null"]},
                "backfill": {"type": ["string", "null"],
                             "description": "copied/total rows, done/tables tables"},
                "writes_held": {"type": "boolean",
                                "description": "a cutover or rollback holds the shop's writes right now"},
                "reference_lag_seconds": {"type": ["number", "null"],
                                          "description": "age of the oldest change of a reference table not "
                                                         "yet in the shop's copies (null: no usable copies)"},
            },
        },
        "Status": {
            "type": "object",
            "properties": {
                "strategy": _ref("Strategy"),
                "dual_write": {"type": "object"}, "summary": {"type": "object"},
                "shops": {"type": "array", "items": _ref("ShopStatus")},
            },
        },
        "ActivateReads": {
            "type": "object",
            "description": 'One of {"percentage": N}, {"shop_ids": [...]} (optionally with '
                           '"strategy": "canary"), {"strategy": "tenant"}',
            "properties": {"percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                           "shop_ids": integers, "strategy": {"enum": ["tenant", "shop-list", "canary"]}},
        },
        "Provisioned": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "shops": {"type": "integer"},
                           "provisioned": {"type": "integer"}, "already": {"type": "integer"},
                           "failed": {"type": "array", "items": {"type": "object"}}},
        },
        "DualWrite": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "capture": {"type": "boolean"},
                           "tables": {"type": "array", "items": {"type": "string"}}},
        },
        "Performance": {
            "type": "object",
            "description": "The performance monitor's report: window, overall and per-source stats, "
                           "per-shop stats with the unified-vs-tenant comparison",
        },
        "Health": {"type": "object",
                   "properties": {"status": {"type": "string"}, "checks": {"type": "object"}}},
    }


def _migration_schemas() -> dict[str, Any]:
    integers = {"type": "array", "items": {"type": "integer"}}
    return {
        "PhaseName": {"enum": ["unified", "provisioned", "backfilling", "backfilled", "mirroring",
                               "reads_on_tenant", "tenant_primary", "retired", "degraded", "failed"]},
        "ShopPhase": {
            "type": "object",
            "properties": {"shop_id": {"type": "integer"}, "phase": _ref("PhaseName"),
                           "version": {"type": "integer", "description": "grows by one per transition"},
                           "resume_phase": {"type": ["string", "null"]},
                           "reason": {"type": ["string", "null"]}, "actor": {"type": ["string", "null"]},
                           "changed_at": {"type": ["string", "null"]}},
        },
        "Phases": {"type": "object",
                   "properties": {"shops": {"type": "array", "items": _ref("ShopPhase")}}},
        "Shops": {
            "type": "object",
            "description": 'One of {"shop_ids": [...]}, {"shop_id": N}, {"all": true}; '
                           'with "wait": true the answer is the finished job',
            "properties": {"shop_ids": integers, "shop_id": {"type": "integer"}, "all": {"type": "boolean"},
                           "wait": {"type": "boolean"}},
        },
        "MigrateData": {
            "allOf": [_ref("Shops"), {"type": "object", "properties": {
                "jobs": {"type": "integer", "minimum": 1, "description": "shops copied at once"},
                "throttle_rows_per_s": {"type": "integer", "minimum": 0, "description": "0: no limit"}}}],
        },
        "Cutover": {
            "type": "object",
            "description": 'One of {"shop_ids": [...]}, {"shop_id": N}, {"percentage": P}; "force": true '
                           "cuts over despite recorded cross-shop/global transactions",
            "properties": {"shop_ids": integers, "shop_id": {"type": "integer"},
                           "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                           "force": {"type": "boolean"}, "wait": {"type": "boolean"}},
        },
        "Retire": {
            "allOf": [_ref("Shops"), {"type": "object", "properties": {
                "dry_run": {"type": "boolean", "description":
                            "report what would happen (the gate's verdicts, the rows, the statements refused "
                            "while tenant_primary), change nothing"},
                "force": {"type": "boolean", "description": "retire even when the proxies refused statements "
                          "touching the shop within [migration] readiness_window_s (audited as forced)"}}}],
        },
    }


def _job_schemas() -> dict[str, Any]:
    return {
        "Job": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "action": {"type": "string"},
                           "actor": {"type": "string"}, "request": {"type": "object"},
                           "state": {"enum": ["running", "done", "failed"]},
                           "started_at": {"type": "number"}, "finished_at": {"type": ["number", "null"]},
                           "progress": {"type": "object"},
                           "result": {"type": ["object", "null"],
                                      "description": "the CLI's --json report (backfill or verification)"},
                           "error": {"type": ["string", "null"]}},
        },
        "Jobs": {"type": "object", "properties": {"jobs": {"type": "array", "items": _ref("Job")}}},
    }


def document() -> dict[str, Any]:
    shop = [{"name": "shop", "in": "query", "required": False, "schema": {"type": "integer"},
             "description": "only this shop"}]
    strategy = _answer("The effective strategy after the change", _ref("StrategyAnswer"))
    health = _answer("alive", _ref("Health"))
    paths = {
        "/healthz": {"get": _op("Liveness: the process answers", health, auth=False)},
        "/readyz": {"get": _op("Readiness: listening, not shutting down, routing catalog loaded",
                               _answer("ready (503 when not)", _ref("Health")), auth=False)},
        "/api/openapi.json": {"get": _op("This document", _answer("OpenAPI 3.1", {"type": "object"}),
                                         auth=False)},
        f"{PREFIX}/status": {"get": _op(
            "Per shop: server, state, read decision, mirror lag, dead letters; "
            "the effective strategy and its source",
            _answer("status", _ref("Status")))},
        f"{PREFIX}/performance": {"get": _op(
            "The performance monitor: latency percentiles, error rates, QPS, slow queries, "
            "unified vs tenant",
            _answer("report", _ref("Performance")), params=shop)},
        f"{PREFIX}/provision-all": {"post": _op(
            "Provision every shop ([tenancy] shops_query); idempotent",
            _answer("outcome", _ref("Provisioned")),
            body={"type": "object", "properties": {"concurrency": {"type": "integer", "minimum": 1}}})},
        f"{PREFIX}/enable-dual-write": {"post": _op(
            "Install write capture on the tenant tables", _answer("capture on", _ref("DualWrite")))},
        f"{PREFIX}/disable-dual-write": {"post": _op(
            "Remove write capture (the outbox drains)", _answer("capture off", _ref("DualWrite")))},
        f"{PREFIX}/activate-reads": {"post": _op(
            "Send reads to tenant databases, gradually: a percentage of shops, or a shop list",
            strategy, body=_ref("ActivateReads"))},
        f"{PREFIX}/rollback-reads": {"post": _op(
            "Every read back to unified at once, on every proxy instance (wins over config files)",
            strategy)},
        f"{PREFIX}/use-config-strategy": {"post": _op(
            "Forget the API's strategy: the config file's [routing] applies again", strategy)},
        f"{PREFIX}/phases": {"get": _op(
            "Every shop's migration phase, its version (the fence) and why it is there",
            _answer("phases", _ref("Phases")))},
        f"{PREFIX}/migrate-data": {"post": _job(
            "Backfill shops (binary COPY from one snapshot, resumable); 202 with the job to follow",
            _ref("MigrateData"))},
        f"{PREFIX}/verify-sync": {"post": _job(
            "Verify shops: row counts and checksums per key range on both sides; 202 with the job",
            _ref("Shops"))},
        f"{PREFIX}/cutover": {"post": _job(
            "Move shops' writes to their own databases, behind a short per-shop fence; 202 with the job",
            _ref("Cutover"))},
        f"{PREFIX}/cutover-check": {"get": _op(
            "The readiness report: transactions that wrote a shop and touched global tables or other shops",
            _answer("per shop", {"type": "object"}),
            params=[{"name": "shop", "in": "query", "required": True, "schema": {"type": "integer"},
                     "description": "repeatable"}])},
        f"{PREFIX}/rollback": {"post": _job(
            "Take shops one migration phase back (reads, writes, copy, database); 202 with the job",
            _ref("Shops"))},
        f"{PREFIX}/retire-legacy": {"post": _job(
            "Archive shops' legacy rows and delete them from unified (gate: tenant_primary, reverse mirror "
            "drained, no refused statements within the readiness window unless force, verified identical); "
            "202 with the job", _ref("Retire"))},
        f"{PREFIX}/restore": {"post": _job(
            "Bring retired shops' rows back into unified from their archive, verified; 202 with the job",
            _ref("Shops"))},
        f"{PREFIX}/jobs": {"get": _op("The jobs of this proxy instance", _answer("jobs", _ref("Jobs")))},
        f"{PREFIX}/jobs/{{job_id}}": {"get": _op(
            "One job: state, progress, result", _answer("the job (404: unknown here)", _ref("Job")),
            params=[{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgtenantproxy admin API", "version": __version__,
                 "description": "Migration control of pgtenantproxy. Every POST is written to the audit log "
                                "(pgtenantproxy.migration_log) with the caller."},
        "servers": [{"url": "http://127.0.0.1:9188"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {**_schemas(), **_migration_schemas(), **_job_schemas()}},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
