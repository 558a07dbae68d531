"""A key's state in Admin.Dump may come in several consecutive Fragment messages (a history
past what one message may hold, 4 MiB); `joined` puts them back together.

The rule every reader of Dump follows: consecutive messages with the same key are parts of
that key's state. The floor is the largest of theirs, the versions (and their values) are
theirs in order, ascending. Generated messages only: the admin command line imports this.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from kvs._gen import replication_pb2 as pb


def joined(parts: Iterable[pb.Fragment]) -> Iterator[pb.Fragment]:
    """One Fragment per key from Dump's replies, whatever number of parts each came in."""
    whole: pb.Fragment | None = None
    for part in parts:
        if whole is not None and part.key == whole.key:
            whole.floor = max(whole.floor, part.floor)
            whole.versions.extend(part.versions)
            whole.values.extend(part.values)
            continue
        if whole is not None:
            yield whole
        whole = pb.Fragment()
        whole.CopyFrom(part)
    if whole is not None:
        yield whole
