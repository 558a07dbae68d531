"""kvs: a replicated, multi-version key-value store over gRPC and MQTT.

`kvs.Client` (kvs/api.py) is the Python client. It is imported on first use,
so that the pure modules (`import kvs.store`, `kvs.codec`) do not load gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvs.api import Client, KeyValue, KvsClientError, Status, Written
    from kvs.tls import ClientTls

__all__ = ["Client", "ClientTls", "KeyValue", "KvsClientError", "Status", "Written"]


def __getattr__(name: str) -> Any:
    if name == "ClientTls":
        from kvs.tls import ClientTls  # noqa: PLC0415

        return ClientTls
    if name in __all__:
        from kvs import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'kvs' has no attribute {name!r}")
