"""Starting the admin API: the exposure check (fatal), then the listening socket (not fatal).

An open API (no token) on a non-loopback address is a configuration error
and stops the proxy at startup. A port that cannot be bound is logged as an
error and the proxy keeps serving clients without its admin API (the CLI
reaches the same control schema).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pgtenantproxy.admin.api import AdminContext, build_app
from pgtenantproxy.admin.auth import check_exposure, load_tokens
from pgtenantproxy.config import Config
from pgtenantproxy.web import WebServer, serve

logger = logging.getLogger(__name__)


async def start_admin(
    config: Config, ctx_without_tokens: AdminContext, environ: Mapping[str, str] | None = None
) -> WebServer | None:
    section = config.admin
    tokens = load_tokens(section, environ)
    check_exposure(section, tokens)
    ctx_without_tokens.tokens = tokens
    try:
        server = await serve(build_app(ctx_without_tokens), section.listen)
    except OSError as exc:
        logger.error("admin API: cannot listen on %s (%s); running without it", section.listen,
                     exc.strerror or exc)
        return None
    if tokens.required:
        logger.info("admin API on %s (bearer token from %s)", server.url, section.token_env)
    else:
        logger.warning("admin API on %s WITHOUT authentication (%s is empty): loopback only",
                       server.url, section.token_env)
    return server
