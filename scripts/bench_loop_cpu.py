"""Runs a kvs server that logs each turn of its event loop that used more than 20 ms of CPU.

    PYTHONPATH=. .venv/bin/python scripts/bench_loop_cpu.py --porta 40000 --broker HOST:PORT ...

(the flags of server.sh; it forces --event-loop asyncio, whose turns can be
timed). A Get's wall-clock latency on a busy machine mixes kvs's own work with
the time the process waits for a CPU; the CPU time of one turn of the loop is
kvs's part alone: a call that holds the loop shows up here whatever the load.

It also logs each collection of the garbage collector that took more than
2 ms of CPU (with its generation). Each turn's line names the callbacks of
that turn that used more than 2 ms (a task is named by its coroutine, and
where it is suspended now):

    ... WARNING kvs.loop_cpu: turn 41 ms CPU (loop time 1234.567): 38 ms <Task ...Replicator._work_forever...>

`scripts/bench.py --only stalls` runs every server of its stall cluster this
way beside the usual ones, and reads the longest turn of each server during
each call from these lines (`longest_turn`).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import time
from asyncio import base_events, events
from collections.abc import Iterable
from typing import Any

import kvs.server.main

THRESHOLD = float(os.environ.get("KVS_LOOP_CPU_MS", "20")) / 1000
"""A turn using more CPU than this is logged (KVS_LOOP_CPU_MS, 20 by default)."""
CALLBACK = 0.002
"""A callback of a logged turn using more than this is named in its line."""
LINE = re.compile(r"^(\S+ \S+) WARNING kvs\.loop_cpu: turn (\d+) ms CPU")
log = logging.getLogger("kvs.loop_cpu")
_run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
_handle_run = events.Handle._run
_slow: list[tuple[float, str]] = []  # the slow callbacks of the current turn


def _timed_handle(self: Any) -> None:
    callback = self._callback  # the loop clears it once a handle has run
    start = time.thread_time()
    _handle_run(self)
    used = time.thread_time() - start
    if used > CALLBACK:
        _slow.append((used, _name(callback)))


def _name(callback: Any) -> str:
    task = getattr(callback, "__self__", None)
    coro = getattr(task, "get_coro", lambda: None)()
    if coro is not None:
        frame = getattr(coro, "cr_frame", None)
        where = f" at {frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}" if frame else ""
        return f"task {getattr(coro, '__qualname__', coro)}{where}"
    return getattr(callback, "__qualname__", repr(callback))[:160]


def _timed_run_once(self: Any) -> None:
    _slow.clear()
    start, wall = time.thread_time(), time.monotonic()
    _run_once(self)
    used = time.thread_time() - start
    if used > THRESHOLD:
        named = "; ".join(f"{cpu * 1000:.0f} ms {name}" for cpu, name in sorted(_slow, reverse=True)[:3])
        took = (time.monotonic() - wall) * 1000
        log.warning("turn %.0f ms CPU (%.0f ms wall): %s", used * 1000, took, named or "-")


_collecting: list[float] = []


def _gc_timed(phase: str, info: dict[str, int]) -> None:
    """Logs each collection of the garbage collector that took more than CALLBACK."""
    if phase == "start":
        _collecting[:] = [time.thread_time()]
    elif _collecting:
        used = time.thread_time() - _collecting.pop()
        if used > CALLBACK:
            log.warning(
                "gc generation %d: %.1f ms CPU, %d collected",
                info["generation"],
                used * 1000,
                info["collected"],
            )


def longest_turn(log_text: str, since: str, until: str) -> float:
    """The longest turn (ms of CPU) logged between the times `since` and `until` (as logging's
    asctime writes them: "2026-12-05 07:30:01,123"); 0 if none went over THRESHOLD."""
    return max(_turns(log_text.splitlines(), since, until), default=0.0)


def _turns(lines: Iterable[str], since: str, until: str) -> Iterable[float]:
    for line in lines:
        if (match := LINE.match(line)) and since <= match[1] <= until:
            yield float(match[2])


if __name__ == "__main__":
    base_events.BaseEventLoop._run_once = _timed_run_once  # type: ignore[attr-defined]
    events.Handle._run = _timed_handle  # type: ignore[method-assign]
    gc.callbacks.append(_gc_timed)
    sys.exit(kvs.server.main.main([*sys.argv[1:], "--event-loop", "asyncio"]))
