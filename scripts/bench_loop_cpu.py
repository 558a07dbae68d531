"""Runs a kvs server that logs each turn of its event loop that used more than 20 ms of CPU.

    PYTHONPATH=. .venv/bin/python scripts/bench_loop_cpu.py --porta 40000 --broker HOST:PORT ...

(the flags of server.sh; it forces --event-loop asyncio, whose turns can be
timed). A Get's wall-clock latency on a busy machine mixes kvs's own work with
the time the process waits for a CPU; the CPU time of one turn of the loop is
kvs's part alone: a call that holds the loop shows up here whatever the load.
"""

from __future__ import annotations

import logging
import sys
import time
from asyncio import base_events
from typing import Any

import kvs.server.main

THRESHOLD = 0.020
log = logging.getLogger("kvs.loop_cpu")
_run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]


def _timed_run_once(self: Any) -> None:
    start = time.thread_time()
    _run_once(self)
    used = time.thread_time() - start
    if used > THRESHOLD:
        log.warning("one turn of the loop used %.0f ms of CPU", used * 1000)


if __name__ == "__main__":
    base_events.BaseEventLoop._run_once = _timed_run_once  # type: ignore[attr-defined]
    sys.exit(kvs.server.main.main([*sys.argv[1:], "--event-loop", "asyncio"]))
