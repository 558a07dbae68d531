"""The wall clock, in the unit of versions: milliseconds since the Unix epoch."""

import time

from kvs.storage.store import Version


def now_ms() -> Version:
    return time.time_ns() // 1_000_000
