"""One exception hierarchy for kvs; each boundary translates it once.

The gRPC service maps `KvsError` subclasses to status codes through one table
(`kvs.service.kvstore.STATUS`); replication logs and drops a `CodecError`.
"""


class KvsError(Exception):
    """Base of every error kvs raises on purpose."""


class InvalidArgument(KvsError):
    """A request that can never succeed as written (empty key, reversed range)."""


class TooLarge(KvsError):
    """A call that would make the server hold more than its documented bound (kvs.limits)."""


class VersionExhausted(KvsError):
    """A key's newest version is the largest int64: no later version exists."""


class QuotaExceeded(KvsError):
    """A write refused because the store is over its --quota-bytes; the message says what to do."""


class CodecError(KvsError):
    """A replication payload that is not a well-formed message for this cluster.

    `reason` is one of kvs.metrics.DropReason: "malformed", "foreign", "misrouted",
    "unauthenticated" (a fixed set: a hostile sender cannot mint metric labels)."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class BrokerUnreachable(KvsError):
    """The MQTT broker could not be reached, or refused this server."""


class BrokerRefused(BrokerUnreachable):
    """The MQTT broker answered and refused this server (wrong user or password, not allowed)."""


class ConfigError(KvsError):
    """A file named by the configuration cannot be used; the server says so in one line and exits 1."""


class KeyFileError(ConfigError):
    """A cluster key or password file that is missing, open to other users, or of the wrong size."""


class DataDirError(KvsError):
    """A --data-dir that cannot be used: the message is the one line the operator reads."""


class NotDurable(KvsError):
    """A write could not be committed to disk; it was not acknowledged."""
