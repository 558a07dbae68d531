"""The one place that opens client channels to kvs servers.

Every client (kvs.Client and the CLI on it, scripts/admin.sh, the test
harness, the benchmarks) gets its channel here, so each one speaks TLS when
given `ClientTls` and has the same size limits (kvs.limits): it can receive
the largest reply a server sends, and it refuses to send a request larger
than a server accepts, without a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from kvs.limits import MAX_REPLY_BYTES, MAX_REQUEST_BYTES
from kvs.net.tls import ClientTls

Options = Sequence[tuple[str, Any]]


def channel_options(options: Options = ()) -> list[tuple[str, Any]]:
    """The limits every channel has, then `options` (which win over them)."""
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": MAX_REPLY_BYTES,
        "grpc.max_send_message_length": MAX_REQUEST_BYTES,
    }
    merged.update(options)
    return list(merged.items())


def open_channel(target: str, tls: ClientTls | None = None, *, options: Options = ()) -> grpc.Channel:
    """A channel to `target` (HOST:PORT): TLS when `tls` is given, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(target, options=channel_options(options))
    return grpc.secure_channel(target, tls.credentials(), options=channel_options(options))


def open_aio_channel(target: str, tls: ClientTls | None = None, *, options: Options = ()) -> grpc.aio.Channel:
    """As `open_channel`, for asyncio code (scripts/bench_load.py)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=channel_options(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=channel_options(options))
