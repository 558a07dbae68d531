#!/usr/bin/env python3
"""A kvs server whose replication payloads carry no real tag: for the benchmark only.

`scripts/bench.py --only auth` runs a pair of these beside a pair of real
servers, so the cost of signing and checking every payload (HMAC-SHA256,
kvs/replication/codec.py) shows as a ratio in one run. It accepts forged messages: never
use it for anything else. There is deliberately no flag for this in kvs.
"""

from __future__ import annotations

import hmac
import sys
from types import SimpleNamespace

from kvs.replication import codec
from kvs.server import main as server

NO_TAG = bytes(codec.TAG)
codec.hmac = SimpleNamespace(digest=lambda *_: NO_TAG, compare_digest=hmac.compare_digest)  # type: ignore[attr-defined,assignment]

if __name__ == "__main__":
    sys.exit(server.main())
