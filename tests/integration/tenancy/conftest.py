"""Fixtures of the tenancy tests: the shared tenancy bed (tests/conftest.py), reset per module."""

from __future__ import annotations

import pytest

from tests.fixtures.tenancy import TenancyBed


@pytest.fixture(scope="module")
def bed(tenancy_bed: TenancyBed) -> TenancyBed:
    """The clusters, reset to a fresh state for this test module."""
    tenancy_bed.reset()
    return tenancy_bed
