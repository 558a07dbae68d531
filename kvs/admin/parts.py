"""A key's state in Admin.Dump may come in several consecutive Fragment messages (a history
past what one message may hold, 4 MiB); `joined` (or `joined_stream`, `Joiner`) puts them back together.

The rule every reader of Dump follows: consecutive messages with the same key are parts of
that key's state. The floor is the largest of theirs, the versions (and their values) are
theirs in order, ascending. Generated messages only: the admin command line imports this.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from kvs._gen import replication_pb2 as pb


class Joiner:
    """Dump's replies fed one at a time (`add`); a key's whole state comes out once the part of
    the next key arrives, and the last at `end`."""

    def __init__(self) -> None:
        self._whole: pb.Fragment | None = None

    def add(self, part: pb.Fragment) -> pb.Fragment | None:
        """`part` joined: the previous key's whole state if `part` starts another key, else None."""
        whole = self._whole
        if whole is not None and part.key == whole.key:
            whole.floor = max(whole.floor, part.floor)
            whole.versions.extend(part.versions)
            whole.values.extend(part.values)
            return None
        self._whole = pb.Fragment()
        self._whole.CopyFrom(part)
        return whole

    def end(self) -> pb.Fragment | None:
        """The last key's whole state (None: there was no part)."""
        whole, self._whole = self._whole, None
        return whole


def joined(parts: Iterable[pb.Fragment]) -> Iterator[pb.Fragment]:
    """One Fragment per key from Dump's replies, whatever number of parts each came in."""
    joiner = Joiner()
    for part in parts:
        if (whole := joiner.add(part)) is not None:
            yield whole
    if (last := joiner.end()) is not None:
        yield last


async def joined_stream(parts: AsyncIterable[pb.Fragment]) -> AsyncIterator[pb.Fragment]:
    """As `joined`, for a stream read by asyncio (`admin.sh web`)."""
    joiner = Joiner()
    async for part in parts:
        if (whole := joiner.add(part)) is not None:
            yield whole
    if (last := joiner.end()) is not None:
        yield last
