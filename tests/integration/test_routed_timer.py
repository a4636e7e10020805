"""The routed driver's one-deadline timer on uvloop (a delay under a millisecond gives a plain Handle)."""

from __future__ import annotations

import asyncio

import uvloop

from pgtenantproxy.server.routed import RoutedDriver


class _Machine:
    def __init__(self) -> None:
        self.fired = 0

    def timer_fired(self) -> None:
        self.fired += 1


def _driver(loop: asyncio.AbstractEventLoop) -> tuple[RoutedDriver, _Machine]:
    driver = object.__new__(RoutedDriver)  # only the timer's state: no sockets
    machine = _Machine()
    driver._loop = loop
    driver._timer = None
    driver._armed_at = 0.0
    driver._deadline = None
    driver.machine = machine  # type: ignore[assignment]
    return driver, machine


def test_a_zero_delay_then_a_later_deadline_fires_once_on_uvloop() -> None:
    async def run() -> int:
        driver, machine = _driver(asyncio.get_running_loop())
        driver.set_timer(0.0)  # uvloop: a plain Handle, which has no when()
        driver.set_timer(0.01)  # must neither fail nor re-arm earlier than needed
        await asyncio.sleep(0.05)
        driver.set_timer(0.0)
        await asyncio.sleep(0.01)
        return machine.fired

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(run()) == 2
