"""Sites for end-to-end tests: a mosquitto per site, each on its own loopback
address (127.0.0.2, 127.0.0.3, ...), bridged as docs/sites.md says, the
bridge's TCP link running through a LinkProxy that can cut, delay or stall it."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kvs.mqtt.bridge import Bridge
from tests.e2e.harness import Process, mosquitto_binary, wait_for
from tests.e2e.linkproxy import LinkProxy


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listening_on(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Site(Process):
    """One site's broker: anonymous, on 127.0.0.`n`, bridged to the sites `bridge_to` names."""

    def __init__(self, log_dir: Path, name: str, n: int, cluster: str, *, clean: bool = False) -> None:
        self.site, self.host, self.cluster, self.clean = name, f"127.0.0.{n}", cluster, clean
        self.port = free_port_on(self.host)
        self.links: dict[str, LinkProxy] = {}  # by the far site's name: the bridges this broker dials
        self.config = log_dir / f"mosquitto-{name}.conf"
        super().__init__(f"mosquitto-{name}", [mosquitto_binary(), "-c", str(self.config)], log_dir)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def bridge_to(self, other: Site) -> LinkProxy:
        """This broker dials `other`'s through a proxy on this site's address (call before start)."""
        link = LinkProxy((other.host, other.port), listen_host=self.host).start()
        self.links[other.site] = link
        return link

    def start(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "set_tcp_nodelay true",
            "sys_interval 1",
            "max_queued_messages 100000",
            "persistence false",
        ]
        text = "".join(f"{line}\n" for line in lines)
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
