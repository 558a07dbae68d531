"""Rate-limited log lines for dropped messages: a flood of junk costs a few lines, not one each.
(The metrics count every one: kvs.metrics, `dropped` and `batch_skipped`.)"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

LOG_EVERY: Final = 10.0
"""Seconds between two log lines about dropped messages of one reason."""


class DropLog:
    """The first drop of a reason is logged at once; the rest of that reason are counted and said in
    one summary line when LOG_EVERY seconds have passed (`flush`, called on every sync tick)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._latest: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def drop(self, reason: str, detail: str) -> None:
        """`reason`: a fixed string (kvs.metrics.DropReason, or our own batches' "write window full");
        `detail`: this message's, for the log."""
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
