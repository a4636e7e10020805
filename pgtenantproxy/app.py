"""Running the proxy: event loop, signals, graceful shutdown.

``serve(config)`` runs until SIGTERM or SIGINT, then shuts down gracefully
(see :mod:`pgtenantproxy.server.listener`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.server.listener import ProxyServer

logger = logging.getLogger(__name__)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        logger.warning("uvloop not available, using the default asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_proxy(
    config: Config, *, ready: Callable[[ProxyServer], Awaitable[None] | None] | None = None
) -> None:
    """Start the proxy and serve until a termination signal."""
    runtime = await RoutingRuntime.start(config) if config.tenant_servers else None
    proxy = ProxyServer(config, router=runtime.dispatcher if runtime is not None else None)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            result = ready(proxy)
            if result is not None:
                await result
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await proxy.shutdown()
        if runtime is not None:
            await runtime.stop()


def serve(config: Config) -> None:
    install_uvloop()
    asyncio.run(run_proxy(config))
