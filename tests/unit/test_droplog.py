"""Dropped messages cost a few log lines, not one each, and every one is counted."""

from __future__ import annotations

import logging

import pytest

from kvs.replication.droplog import LOG_EVERY, DropLog


def test_a_flood_is_one_line_at_once_then_one_summary_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = DropLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "kvs.replication"):
        for i in range(100_000):
            log.drop("malformed", f"junk {i}")
        log.drop("unauthenticated", "forged")
        log.flush()
        assert len(caplog.records) == 2  # the first of each reason
        now[0] += LOG_EVERY
        log.flush()
        log.flush()
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "dropped 1 message(s) (malformed); latest: junk 0"
    assert lines[1] == "dropped 1 message(s) (unauthenticated); latest: forged"
    assert (
        lines[2] == f"dropped 99999 message(s) in the last {LOG_EVERY:.0f} s (malformed); latest: junk 99999"
    )
    assert len(lines) == 3
