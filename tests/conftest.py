"""Shared test plumbing: the tier markers, and whether a test failed, so fixtures can show logs."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.accounts import other_account  # noqa: F401  (a fixture for every tier)

FAILED = pytest.StashKey[bool]()

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test with its tier, the folder it is in: `-m "not e2e"` selects by it."""
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if folder in TIERS:
            item.add_marker(folder)


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
