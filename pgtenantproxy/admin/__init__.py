"""The admin HTTP API: migration status and control, with bearer-token auth and an audit trail.

* :mod:`.auth` — tokens from the environment, constant-time comparison,
  the loopback rule;
* :mod:`.api` — the aiohttp routes; :mod:`.actions` — what the POSTs do
  (each audited); :mod:`.report` — the status report (shared with
  ``pgtenantproxy status``); :mod:`.openapi` — the OpenAPI document;
* :mod:`.server` — starting it inside the proxy.

See docs/observability.md ("Admin API").
"""
