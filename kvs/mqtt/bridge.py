"""The Mosquitto bridge that carries one kvs cluster between two sites' brokers.

One place for the lines docs/sites.md explains, used by the tests that start
bridged brokers (kvs/local/sites.py). Pure: it returns text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bridge:
    """A bridge from this site's broker (`local`, a name) to another site's broker at `address`."""

    local: str
    remote: str
    address: str  # HOST:PORT of the other site's broker
    cluster: str = "kvs"  # the topic prefix (--cluster); every cluster carried needs its own topic line
    clean: bool = False  # cleansession: False keeps the bridge's queue on the far broker while cut
    user: str | None = None
    password: str | None = None
    cafile: Path | None = None  # TLS to the far broker, verified with this CA

    def config(self) -> str:
        """The `connection` section of this site's mosquitto.conf."""
        name = f"kvs-{self.local}-to-{self.remote}"
        lines = [
            f"connection {name}",
            f"address {self.address}",
            "bridge_protocol_version mqttv50",
            "try_private true",
            # Both ways, QoS 1, and nothing remapped: the same topics on every site.
            f"topic {self.cluster}/# both 1",
            f"cleansession {'true' if self.clean else 'false'}",
            # Fixed client ids: the far broker keeps the bridge's session (and queue) across a cut.
            f"remote_clientid {name}",
            f"local_clientid {name}-local",
            # Mosquitto 2.0.11 ignores one number here; with two, a cut bridge retries every second.
            "restart_timeout 1 1",
            "keepalive_interval 10",
            # $SYS/broker/connection/<id>/state on both brokers: joiners wait while it is down.
            "notifications true",
        ]
        if self.user is not None:
            lines.append(f"remote_username {self.user}")
            if self.password is not None:
                lines.append(f"remote_password {self.password}")
        if self.cafile is not None:
            lines.append(f"bridge_cafile {self.cafile}")
        return "".join(f"{line}\n" for line in lines)
