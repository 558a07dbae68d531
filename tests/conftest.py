"""Shared test plumbing: remember whether a test failed, so fixtures can show logs."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from hypothesis import settings

from tests.accounts import other_account  # noqa: F401  (a fixture for every tier)

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


# Shared machines stall a process now and then: a slow example is not a failing one.
settings.register_profile("kvs", deadline=None)
settings.load_profile("kvs")
