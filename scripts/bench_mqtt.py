"""The MQTT ceiling of the benchmark: a paho publisher and a paho subscriber
through the same mosquitto, with payloads the size of one replicated Put.

    python scripts/bench_mqtt.py BROKER_PORT rate SECONDS     # msgs/s one subscriber receives at QoS 1
    python scripts/bench_mqtt.py BROKER_PORT latency SECONDS  # publish-to-receive at 1000 msgs/s

Prints one JSON object. Both clients set TCP_NODELAY, as kvs does.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

PAYLOAD_SIZE = 160  # a Batch envelope carrying one Put of a 16-byte key and a 100-byte value
TOPIC = "bench/mqtt"


def client(port: int, on_message: Any = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.on_socket_open = lambda _c, _u, sock: cast(socket.socket, sock).setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    c.max_inflight_messages_set(1000)
    if on_message:
        c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def main() -> None:
    port, mode, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    received: list[float] = []
    sent: dict[int, float] = {}
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received.append(time.monotonic())
        if mode == "latency":
            sent_at = sent.get(int.from_bytes(message.payload[:8], "big"))
            if sent_at is not None:
                received[-1] -= sent_at

    subscriber = client(port, on_message)
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.subscribe(TOPIC, qos=1)
    subscribed.wait(5)
    publisher = client(port)
    padding = b"x" * (PAYLOAD_SIZE - 8)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        if mode == "latency":
            target = start + i / 1000
            while time.monotonic() < target:
                time.sleep(0.0002)
        sent[i] = time.monotonic()
        info = publisher.publish(TOPIC, i.to_bytes(8, "big") + padding, qos=1)
        if mode == "rate" and i % 500 == 0:
            info.wait_for_publish(5)  # keeps paho's queue bounded
        i += 1
    time.sleep(0.5)
    if mode == "rate":
        count = sum(1 for t in received if t <= start + seconds)
        print(json.dumps({"rate": count / seconds}))
    else:
        lags = sorted(received)
        print(
            json.dumps(
                {"p50_ms": statistics.median(lags) * 1000, "p99_ms": lags[int(len(lags) * 0.99)] * 1000}
            )
        )
    for c in (publisher, subscriber):
        c.disconnect()
        c.loop_stop()


if __name__ == "__main__":
    main()
