"""Rate-limited log lines for dropped messages: a flood of junk costs a few lines, not one each."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Final, cast

from kvs.metrics import NO_METRICS, DropReason, ReplicationMetrics

log = logging.getLogger("kvs.replication")

LOG_EVERY: Final = 10.0
"""Seconds between two log lines about dropped messages of one reason."""


class DropLog:
    """One log line per reason per LOG_EVERY seconds, with the count of what was dropped meanwhile."""

    def __init__(self, metrics: ReplicationMetrics = NO_METRICS) -> None:
        self._metrics = metrics
        self._counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def drop(self, reason: str, detail: str) -> None:
        """`reason`: one of kvs.metrics.DropReason; `detail`: the latest example, for the log."""
        self._metrics.dropped(cast(DropReason, reason))
        now = time.monotonic()
        self._counts[reason] += 1
        if now - self._last.get(reason, -LOG_EVERY) >= LOG_EVERY:
            count, self._counts[reason] = self._counts[reason], 0
            log.warning("dropped %d message(s) in %.0f s (%s); latest: %s", count, LOG_EVERY, reason, detail)
            self._last[reason] = now
