"""What the web view computes, with no IO: batch lines thinned when too fast, the
keys on which replicas differ, and whether each server's digest agrees.

kvs/admin/web.py feeds these from the servers' Admin service and pushes their
results to the page. Times are seconds (time.time()), passed in.

Thinning, by example (at most `rate` (4) lines a second per server, in a bucket of
`rate` tokens): a batch that finds a token and nothing folded is shown as its own
line. A batch that finds none starts a fold; every batch until the fold is
`window` (0.5) seconds old joins it, and then the fold is shown as one line that says
how many batches (and keys) it holds. No batch is dropped without being counted.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

ADDRESS = re.compile(r"(\[[^]]+\]|[^:\[\]]+):[0-9]{1,5}")
"""HOST:PORT (or [IPv6]:PORT): a peer id of that shape is taken for its address (as `admin.sh status`
takes it; nothing imports the CLI, kvs/admin/cli.py)."""


def fingerprint(digest: Sequence[int]) -> str:
    """A digest to compare by eye: the XOR of every bucket's hash (as `admin.sh status` shows it)."""
    return f"{functools.reduce(operator.xor, digest, 0):016x}"


SAMPLE_KEYS = 5
"""Keys shown on one line of the batch stream (the rest are counted)."""
SHOWN_CHARS = 80
"""A key or value longer than this is cut, with an ellipsis, in what the page shows."""
ORIGINS_SHOWN = 8
"""Origins named on one folded line (the rest are counted together)."""


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as shown: at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Line:
    """One line of a server's batch stream: one applied batch, or several folded together."""

    at: float  # when the (first) batch was applied
    batches: int
    keys: int
    origins: dict[str, int]  # origin -> batches
    sample: list[str]  # the first SAMPLE_KEYS keys, cut
    lag_ms: float | None = None  # for a batch that carries a write this tool timed

    @property
    def folded(self) -> int:
        """How many batches were folded into this line (0: it is one batch)."""
        return self.batches if self.batches > 1 else 0

    def add(self, origin: str, keys: Sequence[str]) -> None:
        self.batches += 1
        self.keys += len(keys)
        if origin in self.origins or len(self.origins) < ORIGINS_SHOWN:
            self.origins[origin] = self.origins.get(origin, 0) + 1
        else:
            self.origins["…"] = self.origins.get("…", 0) + 1
        room = SAMPLE_KEYS - len(self.sample)
        self.sample += [cut(k) for k in keys[:room]]

    def record(self) -> dict[str, object]:
        return {
            "at": round(self.at * 1000),
            "batches": self.batches,
            "folded": self.folded,
            "keys": self.keys,
            "origins": dict(self.origins),
            "sample": list(self.sample),
            "lag_ms": None if self.lag_ms is None else round(self.lag_ms, 1),
        }


class Thinner:
    """A server's batches as lines: one each while they come slowly, folded past `rate` a second."""

    def __init__(self, rate: float = 4.0, window: float = 0.5) -> None:
        self.rate = rate
        self.window = window
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._last: float | None = None
        self._fold: Line | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def add(self, origin: str, keys: Sequence[str], now: float, lag_ms: float | None = None) -> Line | None:
        """The line to show now for this batch, or None when it was folded (see `flush`)."""
        self._refill(now)
        if self._fold is None and self._tokens >= 1:
            self._tokens -= 1
            line = Line(now, 0, 0, {}, [], lag_ms)
            line.add(origin, keys)
            return line
        if self._fold is None:
            self._fold = Line(now, 0, 0, {}, [])
        self._fold.add(origin, keys)
        if lag_ms is not None:
            self._fold.lag_ms = lag_ms
        return None

    def flush(self, now: float, force: bool = False) -> Line | None:
        """The folded line, once it is `window` seconds old (or at once with `force`)."""
        fold = self._fold
        if fold is None or (not force and now - fold.at < self.window):
            return None
        self._fold = None
        self._refill(now)
        self._tokens = max(0.0, self._tokens - 1)
        return fold

    @property
    def pending(self) -> int:
        """Batches folded and not shown yet."""
        return 0 if self._fold is None else self._fold.batches


class FragmentLike(Protocol):
    """What Admin.Dump streams (kvs._gen.replication_pb2.Fragment), as far as a diff reads it."""

    @property
    def key(self) -> str: ...
    @property
    def floor(self) -> int: ...
    @property
    def versions(self) -> Sequence[int]: ...
    @property
    def values(self) -> Sequence[str]: ...


def state_of(fragment: FragmentLike | None) -> str:
    """A key's state on one server, in words: its newest value, a deletion, or absence."""
    if fragment is None:
        return "absent"
    live = [(v, x) for v, x in zip(fragment.versions, fragment.values, strict=True) if v >= fragment.floor]
    if live:
        version, value = max(live)
        return f"{cut(value, 40)!r} @ {version}"
    return f"deleted (floor {fragment.floor})" if fragment.floor else "absent"


def _same(a: FragmentLike | None, b: FragmentLike | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.floor, list(a.versions), list(a.values)) == (b.floor, list(b.versions), list(b.values))


@dataclass
class Diff:
    """The keys on which some servers' dumps differ: the first `limit` of them, and how many in all."""

    servers: list[str]
    total: int = 0
    keys: list[dict[str, object]] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {"servers": self.servers, "total": self.total, "keys": self.keys}


async def differing(dumps: Mapping[str, AsyncIterator[FragmentLike]], limit: int = 50) -> Diff:
    """Merges dumps (each in byte-wise key order, as Admin.Dump sends them) key by key.

    Holds one fragment per server at a time, so it compares replicas of any size
    in constant memory. Each differing key says every server's state of it; two
    states that read the same (same newest value) differ in their history.
    """
    names = list(dumps)
    heads: dict[str, FragmentLike | None] = {}
    for name in names:
        heads[name] = await anext(dumps[name], None)
    diff = Diff(names)
    while any(head is not None for head in heads.values()):
        key = min(head.key for head in heads.values() if head is not None)
        here = {name: head if head is not None and head.key == key else None for name, head in heads.items()}
        first = here[names[0]]
        if not all(_same(first, fragment) for fragment in here.values()):
            diff.total += 1
            if len(diff.keys) < limit:
                states = {name: state_of(fragment) for name, fragment in here.items()}
                if len(set(states.values())) == 1:
                    states = {name: f"{s} (other history)" for name, s in states.items()}
                diff.keys.append({"key": cut(key), "states": states})
        for name, fragment in here.items():
            if fragment is not None:
                heads[name] = await anext(dumps[name], None)
    return diff


@dataclass
class Agreement:
    """One server's digest against the others that answered."""

    same: list[str]
    differs: list[str]
    since: float | None  # when it began to differ from some other server


class Agreements:
    """Follows which servers share a digest, and since when each has differed."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def update(self, digests: Mapping[str, str | None], now: float) -> dict[str, Agreement]:
        """`digests`: a fingerprint per server, None for one that did not answer."""
        answered = {name: d for name, d in digests.items() if d is not None}
        result: dict[str, Agreement] = {}
        for name, digest in answered.items():
            others = sorted(n for n in answered if n != name)
            same = [n for n in others if answered[n] == digest]
            differs = [n for n in others if answered[n] != digest]
            if differs:
                self._since.setdefault(name, now)
            else:
                self._since.pop(name, None)
            result[name] = Agreement(same, differs, self._since.get(name))
        for name in list(self._since):
            if name not in answered:
                del self._since[name]
        return result

    def disagreeing_since(self) -> float | None:
        """The earliest time some servers began to differ; None while all that answer agree."""
        return min(self._since.values(), default=None)
