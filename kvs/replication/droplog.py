"""Rate-limited log lines for dropped messages: a flood of junk costs a few lines, not one each."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, cast

from kvs.metrics import NO_METRICS, DropReason, ReplicationMetrics

log = logging.getLogger(__name__)

LOG_EVERY: Final = 10.0
"""Seconds between two log lines about dropped messages of one reason."""


class DropLog:
    """The first drop of a reason is logged at once; the rest of that reason are counted and said in
    one summary line when LOG_EVERY seconds have passed (`flush`, called on every sync tick)."""

    def __init__(
        self, metrics: ReplicationMetrics = NO_METRICS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics, self._clock = metrics, clock
        self._counts: Counter[str] = Counter()
        self._latest: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def drop(self, reason: str, detail: str) -> None:
        """`reason`: one of kvs.metrics.DropReason; `detail`: this message's, for the log."""
        self._metrics.dropped(cast(DropReason, reason))
        self._counts[reason] += 1
        self._latest[reason] = detail
        self.flush(reason)

    def flush(self, *reasons: str) -> None:
        """Logs the count of each reason (all: none given) whose last line is LOG_EVERY seconds old."""
        now = self._clock()
        for reason in reasons or list(self._counts):
            since = self._last.get(reason)
            if self._counts[reason] and (since is None or now - since >= LOG_EVERY):
                count, self._counts[reason] = self._counts[reason], 0
                took = "" if since is None else f" in the last {now - since:.0f} s"
                log.warning(
                    "dropped %d message(s)%s (%s); latest: %s", count, took, reason, self._latest[reason]
                )
                self._last[reason] = now
