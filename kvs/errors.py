"""One exception hierarchy for kvs; each boundary translates it once.

The gRPC service maps `KvsError` subclasses to status codes through one table
(`kvs.service.STATUS`); replication logs and drops a `CodecError`.
"""


class KvsError(Exception):
    """Base of every error kvs raises on purpose."""


class InvalidArgument(KvsError):
    """A request that can never succeed as written (empty key, reversed range)."""


class VersionExhausted(KvsError):
    """A key's newest version is the largest int64: no later version exists."""


class CodecError(KvsError):
    """A replication payload that is not a well-formed message for this cluster."""


class BrokerUnreachable(KvsError):
    """The MQTT broker could not be reached, or refused this server."""


class DataDirError(KvsError):
    """A --data-dir that cannot be used: the message is the one line the operator reads."""


class NotDurable(KvsError):
    """A write could not be committed to disk; it was not acknowledged."""
