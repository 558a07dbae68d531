#!/usr/bin/env python3
"""A kvs server whose batches wait FLUSH_EVERY at every rate: for the benchmark only.

`scripts/bench.py --only batching` runs a pair of these beside a pair of real
servers, so what the longer batches under load (FLUSH_LOADED from LOADED writes a
second, kvs/replication/adapter.py) gain in CPU per write shows as a ratio in one run.
There is deliberately no flag for this in kvs.
"""

from __future__ import annotations

import sys

from kvs.replication import adapter
from kvs.server import main as server

adapter.FLUSH_LOADED = adapter.FLUSH_EVERY  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(server.main())
