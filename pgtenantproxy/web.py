"""Small HTTP servers on the proxy's event loop (metrics exporter, admin API), with aiohttp.

:func:`serve` binds an aiohttp application to a ``host:port`` (port 0 picks
a free one, for tests) and returns a :class:`WebServer` that knows the bound
addresses. Binding errors propagate: the caller decides whether they are
fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pgtenantproxy.config import parse_listen


@dataclass
class WebServer:
    runner: web.AppRunner
    addresses: list[tuple[str, int]]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        host, port = self.addresses[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, listen: str) -> WebServer:
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
    return WebServer(runner, addresses)
