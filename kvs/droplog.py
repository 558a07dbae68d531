"""Rate-limited log lines for dropped messages: a flood of junk costs a few lines, not one each."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Final

log = logging.getLogger("kvs.replication")

LOG_EVERY: Final = 10.0
"""Seconds between two log lines about dropped messages of one reason."""


class DropLog:
    """One log line per reason per LOG_EVERY seconds, with the count of what was dropped meanwhile."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def drop(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        self._counts[reason] += 1
        if now - self._last.get(reason, -LOG_EVERY) >= LOG_EVERY:
            count, self._counts[reason] = self._counts[reason], 0
            log.warning("dropped %d message(s) in %.0f s (%s); latest: %s", count, LOG_EVERY, reason, detail)
            self._last[reason] = now
