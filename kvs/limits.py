"""Message size limits: a request the server accepts always has a reply the client can read.

gRPC refuses any message larger than the receiver's limit (RESOURCE_EXHAUSTED),
4 MiB by default on both sides. If the server accepted requests up to 4 MiB,
the reply to a Put of 4 MiB (and every later read of that value) would be a few
bytes larger than the client may receive: a call that changed data would look
failed, and the value could never be read again (docs/contract.md, "The calls", guarantee 8).
So the server accepts requests up to the reply limit less the most any reply
adds to the request that put its contents there.

The arithmetic, in protobuf's encoding (one tag byte per field: every field
number is below 16; a string is tag, length varint, bytes; an int64 is tag,
varint; proto3 leaves out empty strings and zeros):

- Everything a reply carries beyond versions is one key and at most one value,
  and both arrived together in one accepted KeyValueRequest (key = 1, val = 2).
  KeyValueVersionReply (key = 1, val = 2) and PutReply (key = 1, old_val = 2)
  encode them with the same tags and the same length varints, so they take
  exactly as many bytes as in that request (which was at most MAX_REQUEST_BYTES).
  A not-found reply carries only the requested key, from a request that fit too.
- Then the versions: at most two (PutReply's old_ver and ver). Versions are
  milliseconds no later than 253402300799999 (the last one of year 9999,
  docs/contract.md, "Security"), which is below 2^48, so a varint of at most 7 bytes
  (7 bits each: 49 bits): 1 tag + 7 = 8 bytes per version, 16 for two. A read may be
  made at any int64, but a reply echoes the version asked only when it is below a
  stored version, so it is within that bound too.

Largest reply = largest request + 16, so MAX_REQUEST_BYTES = 4 MiB - 16 =
4,194,288 bytes. tests/integration/test_limits.py checks both edges (the
largest key, the largest value) and the byte after them.
"""

from __future__ import annotations

MAX_REPLY_BYTES = 4 * 1024 * 1024
"""The receive limit of every client channel (kvs.net.channel): gRPC's default, stated."""

REPLY_OVERHEAD_BYTES = 2 * (1 + 7)
"""What a reply adds at most over the request its key and value came in: two int64 fields."""

MAX_REQUEST_BYTES = MAX_REPLY_BYTES - REPLY_OVERHEAD_BYTES
"""The largest request a server accepts (4,194,288 bytes); larger is RESOURCE_EXHAUSTED."""

MAX_GETALL_BYTES = 32 * 1024 * 1024
"""What one GetAll stream may make the server hold: 32 MiB of keys (each counted as the memory it
takes, its length plus about 60 bytes; up to 4 bytes a character outside ASCII). GetAll must read
its whole stream before it answers (its version is the largest of the stream), so without this
bound one client could make the server hold any amount; past it the call is RESOURCE_EXHAUSTED,
with no reply. Split larger reads into several GetAll calls (docs/contract.md)."""

MAX_QUOTED_KEY = 40
"""Error messages quote at most this many characters of a key: a status message of megabytes
would be replaced by gRPC's own, and says nothing more."""


def quoted(key: str) -> str:
    """A key as an error message shows it: its first characters, and how long it is if cut."""
    if len(key) <= MAX_QUOTED_KEY:
        return repr(key)
    return f"{key[:MAX_QUOTED_KEY]!r}... ({len(key)} characters)"
