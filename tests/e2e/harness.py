"""Test glue over `kvs.local`: servers started by `./server.sh`, the command-line tools,
and helpers the end-to-end tests share (convergence, forged MQTT messages, a writer thread)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kvs._gen import kvs_pb2 as pb
from kvs._gen import replication_pb2
from kvs.local.processes import LocalBroker, LocalServer, reserve_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class KvsServer(LocalServer):
    """`./server.sh` on a reserved loopback port (or `port`), with the client command line at hand."""

    def __init__(
        self,
        log_dir: Path,
        name: str,
        extra: Sequence[str] = (),
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(log_dir, name, extra, port, env=env, command=[str(ROOT / "server.sh")], cwd=ROOT)

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_client("--porta", str(self.port), "--host", "127.0.0.1", *args, check=check)

    def client_json(self, *args: str) -> list[dict[str, object]]:
        out = self.client("--json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


def run_client(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(ROOT / "client.sh"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"client {args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def run_admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "admin.sh"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def converged(servers: Sequence[LocalServer], timeout: float = 30.0) -> list[replication_pb2.Fragment]:
    """Waits until every server has the same digest, checks their dumps are equal, returns one."""

    def same_digest() -> bool:
        digests = {tuple(server.status().digest) for server in servers}
        return len(digests) == 1

    wait_for("the servers to converge", same_digest, timeout, every=0.2)
    dumps = [server.dump() for server in servers]
    for server, dump in zip(servers[1:], dumps[1:], strict=True):
        assert dump == dumps[0], f"{server.name} differs from {servers[0].name}"
    return dumps[0]


@contextmanager
def mqtt_client(broker: LocalBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(broker: LocalBroker, messages: Sequence[tuple[str, bytes]], retain: bool = False) -> None:
    """Publishes each (topic, payload) at QoS 1 and waits for the broker to take it."""
    with mqtt_client(broker) as client:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


class Tap:
    """A plain MQTT client that records what the servers publish under the cluster's prefix."""

    def __init__(self, broker: LocalBroker, cluster: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_message = self._note
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe(f"{cluster}/#", qos=1)
        self._client.loop_start()
        time.sleep(0.3)  # the SUBACK, and the retained presences, arrive

    def _note(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        """What was published on `topic` so far, oldest first (empty payloads left out)."""
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic and p]

    def bytes_on(self, prefix: str, since: int = 0) -> int:
        with self._lock:
            return sum(len(p) for t, p, _ in self.messages[since:] if t.startswith(prefix))

    def first(self, topic: str, retained: bool = False) -> bytes:
        def found() -> bytes | None:
            with self._lock:
                return next((p for t, p, r in self.messages if t == topic and r == retained), None)

        return wait_for(f"a message on {topic}", found)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def tap(broker: LocalBroker, cluster: str) -> Iterator[Tap]:
    """A Tap on `cluster`'s topics for the duration of the block."""
    listener = Tap(broker, cluster)
    try:
        yield listener
    finally:
        listener.close()


class Writer:
    """Writes unique keys to the servers from a thread; remembers every acknowledged write."""

    def __init__(self, servers: Sequence[LocalServer], prefix: str) -> None:
        self.servers = servers
        self.prefix = prefix
        self.acknowledged: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            k = f"{self.prefix}{i:06}"
            self.acknowledged[k] = (
                self.servers[i % len(self.servers)].stub.Put(pb.KeyValueRequest(key=k, val=k)).ver
            )
            i += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, count: int) -> None:
        start = len(self.acknowledged)
        wait_for(f"{count} more writes", lambda: len(self.acknowledged) >= start + count)


def run_server(data_dir: Path, cluster: str) -> subprocess.CompletedProcess[str]:
    """A server that is expected to refuse to start (no broker is needed for that)."""
    with reserve_port() as broker, reserve_port() as port:  # nothing listens on either
        argv = [str(ROOT / "server.sh"), "--porta", str(port.port), "--listen", "127.0.0.1", "--broker",
                f"127.0.0.1:{broker.port}", "--cluster", cluster, "--data-dir", str(data_dir)]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert len(output.strip().splitlines()) == 1, f"not one line:\n{output}"
    for word in words:
        assert word in output


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` with a hash of its bytes: what must stay untouched."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip
