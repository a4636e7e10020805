"""What every walkthrough step works with: the running proxy, write mirroring, the load, the output.

A :class:`Walk` is built once the proxy serves (:mod:`.run`) and handed to
each step's action (:mod:`.steps`). It holds no logic of its own beyond
small helpers the steps share: the pause (shorter with ``--fast``) and
waiting, bounded, for the shops' phases to settle. A step that cannot do its
job raises :class:`StepFailed` with a sentence for the operator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console

from pgtenantproxy.app import ProxyApp
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.tenancy.service import TenancyService
from pgtenantproxy.walkthrough.figures import FigureTaker
from pgtenantproxy.walkthrough.workload import Workload

ACTOR = "walkthrough"
FAST_FACTOR = 0.25  # --fast: pauses are this fraction of the normal ones


class StepFailed(Exception):
    """A step could not do its job; the message says what went wrong."""


@dataclass
class Walk:
    config: Config
    app: ProxyApp
    mirror: DualWriteService
    workload: Workload
    console: Console
    shops: tuple[int, ...]
    fast: bool = False
    #: Rows per table of the sample as loaded (a fresh load: its serial ids run from 1 to these).
    sample: dict[str, int] = field(default_factory=dict)
    figures: FigureTaker = field(init=False)

    def __post_init__(self) -> None:
        self.figures = FigureTaker(self.runtime, self.mirror, self.app, self.workload, self.shops)

    @property
    def runtime(self) -> RoutingRuntime:
        if self.app.runtime is None:
            raise StepFailed("the proxy has no routing runtime (no [[tenant_servers]] in its config)")
        return self.app.runtime

    @property
    def tenancy(self) -> TenancyService:
        return self.runtime.tenancy

    async def pause(self, seconds: float) -> None:
        """Let the load run for a while (a quarter of it with --fast)."""
        await asyncio.sleep(seconds * FAST_FACTOR if self.fast else seconds)

    async def phases(self) -> dict[int, str]:
        records = await read_phases(self.tenancy.pool)
        return {shop: records[shop].phase if shop in records else ph.UNIFIED for shop in self.shops}

    async def wait_phases(self, want: Callable[[int, str], bool], *, timeout_s: float) -> dict[int, str]:
        """Poll until ``want(shop, phase)`` holds for every shop or the timeout; the phases last seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = await self.phases()
            if all(want(shop, phase) for shop, phase in now.items()) or time.monotonic() > deadline:
                return now
            await asyncio.sleep(0.1)
