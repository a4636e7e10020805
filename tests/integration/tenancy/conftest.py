"""Fixtures of the tenancy tests: one unified + two tenant servers per session, reset per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.tenancy import TenancyBed, make_tenancy_bed


@pytest.fixture(scope="session")
def tenancy_bed() -> Iterator[TenancyBed]:
    bed = make_tenancy_bed()
    try:
        yield bed
    finally:
        bed.destroy()


@pytest.fixture(scope="module")
def bed(tenancy_bed: TenancyBed) -> TenancyBed:
    """The clusters, reset to a fresh state for this test module."""
    tenancy_bed.reset()
    return tenancy_bed
