"""kvs: a replicated, multi-version key-value store over gRPC and MQTT.

`kvs.Client` (kvs/client/api.py) is the Python client. It is imported on first use,
so that the pure modules (`import kvs.storage.store`, `kvs.replication.codec`) do not load gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvs.client.api import Client, KeyValue, KvsClientError, Status, Written
    from kvs.net.tls import ClientTls

__all__ = ["Client", "ClientTls", "KeyValue", "KvsClientError", "Status", "Written"]


def __getattr__(name: str) -> Any:
    if name == "ClientTls":
        from kvs.net.tls import ClientTls  # noqa: PLC0415

        return ClientTls
    if name in __all__:
        from kvs.client import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'kvs' has no attribute {name!r}")
