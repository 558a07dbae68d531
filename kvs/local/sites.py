"""Sites on one machine, for the end-to-end tests and the benchmark: a mosquitto per site,
each on its own loopback address (127.0.0.2, 127.0.0.3, ...), bridged as docs/sites.md
says, the bridge's TCP link running through a LinkProxy that can cut, delay or stall it."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kvs.local.linkproxy import LinkProxy
from kvs.local.processes import Process, reserve_port, wait_for
from kvs.mqtt.bridge import Bridge
from kvs.mqtt.broker import mosquitto_binary, mosquitto_config


def listening_on(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Site(Process):
    """One site's broker: anonymous, on 127.0.0.`n`, bridged to the sites `bridge_to` names."""

    def __init__(self, log_dir: Path, name: str, n: int, cluster: str, *, clean: bool = False) -> None:
        self.site, self.host, self.cluster, self.clean = name, f"127.0.0.{n}", cluster, clean
        reservation = reserve_port(self.host)  # released by close()
        self.port = reservation.port
        self.links: dict[str, LinkProxy] = {}  # by the far site's name: the bridges this broker dials
        self.config = log_dir / f"mosquitto-{name}.conf"
        super().__init__(
            f"mosquitto-{name}",
            [str(mosquitto_binary()), "-c", str(self.config)],
            log_dir,
            reservation=reservation,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def bridge_to(self, other: Site) -> LinkProxy:
        """This broker dials `other`'s through a proxy on this site's address (call before start)."""
        link = LinkProxy((other.host, other.port), listen_host=self.host).start()
        self.links[other.site] = link
        return link

    def start(self) -> None:
        text = mosquitto_config(self.port, host=self.host)  # anonymous: loopback, for tests and demos
        for far, link in self.links.items():
            text += Bridge(self.site, far, link.address, self.cluster, clean=self.clean).config()
        self.config.write_text(text)
        super().start()
        wait_for(f"{self.name}", lambda: listening_on(self.host, self.port) or not self.running())
        assert self.running(), self.log()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop_links(self) -> None:
        for link in self.links.values():
            link.stop()


def crosses(source: Site, target: Site, timeout: float = 20.0) -> float:
    """Waits until a message published on `source` arrives on `target` (the bridge is up); returns
    how long it took."""
    topic = f"{source.cluster}/probe/{uuid.uuid4().hex}"
    arrived = threading.Event()
    receiver = _client(target)
    receiver.on_message = lambda c, u, m: arrived.set()
    receiver.subscribe(topic, 1)
    sender = _client(source)
    started = time.monotonic()
    try:
        while not arrived.wait(0.2):
            sender.publish(topic, b"probe", qos=1)
            if time.monotonic() - started > timeout:
                raise AssertionError(f"nothing crossed from {source.site} to {target.site} in {timeout} s")
        return time.monotonic() - started
    finally:
        for client in (sender, receiver):
            client.disconnect()
            client.loop_stop()


def _client(site: Site) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(site.host, site.port)
    client.loop_start()
    return client
