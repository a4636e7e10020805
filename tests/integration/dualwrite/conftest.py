"""Fixtures of the write-mirroring tests: one bed per session, reset for every module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pgtenantproxy.dualwrite.service import DualWriteService
from tests.integration.dualwrite.bed import MirrorBed, make_bed


@pytest.fixture(scope="session")
async def mirror_bed() -> AsyncIterator[MirrorBed]:
    bed = await make_bed()
    try:
        yield bed
    finally:
        bed.destroy()


@pytest.fixture(scope="module")
async def bed(mirror_bed: MirrorBed) -> MirrorBed:
    """The bed, back to its start: capture on, seed rows mirrored, nothing queued or degraded."""
    await mirror_bed.reset()
    return mirror_bed


@pytest.fixture
async def mirror(bed: MirrorBed) -> AsyncIterator[DualWriteService]:
    """Write mirroring running in the test's event loop (status poller and worker)."""
    svc = await DualWriteService.open(bed.config(), run_worker=True)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()
