"""A bad link between a server and its broker: the server keeps reconnecting,
says so, and replicates again once the link recovers. And a broker that refuses
a subscription."""

from __future__ import annotations

import json
import os
import pwd
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from kvs._gen import kvs_pb2 as pb
from kvs.local.linkproxy import LinkProxy, Mode
from kvs.local.processes import Process, port_open, wait_for
from kvs.mqtt.broker import mosquitto_binary
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


@pytest.fixture
def link(processes: Processes) -> Iterator[LinkProxy]:
    proxy = LinkProxy(("127.0.0.1", processes.broker.port)).start()
    yield proxy
    proxy.stop()


def replicates(source: KvsServer, target: KvsServer, key: str, timeout: float = 20.0) -> None:
    """A Put on `source` is read on `target` within `timeout` seconds."""
    source.stub.Put(pb.KeyValueRequest(key=key, val=key))

    def arrived() -> bool:
        return bool(target.stub.Get(pb.KeyRequest(key=key)).val == key)

    wait_for(f"{key} from {source.name} on {target.name}", arrived, timeout, every=0.1)


@pytest.mark.parametrize("mode", ["reset", "cut"])
def test_a_link_that_resets_every_connection_for_a_while(
    processes: Processes, link: LinkProxy, mode: Mode
) -> None:
    """Every connection reset as soon as it opens, for 8 s: the server keeps trying, then recovers."""
    near = processes.server("near")
    far = processes.server("far", ["--broker", link.address])
    replicates(near, far, "before")
    link.set(mode)
    time.sleep(8)
    accepted = link.accepted
    assert accepted >= 4, f"only {accepted} connections tried in 8 s"
    link.set("pass")
    replicates(near, far, "after")
    replicates(far, near, "back")
    assert "broker still unreachable" in far.log()
    assert "reconnected after" in far.log()


def test_a_link_that_refuses_then_returns(processes: Processes) -> None:
    """Nothing listens at the broker's address for a while (the proxy stopped)."""
    proxy = LinkProxy(("127.0.0.1", processes.broker.port)).start()
    near = processes.server("near")
    far = processes.server("far", ["--broker", proxy.address])
    port = proxy.port
    proxy.stop()
    time.sleep(4)
    proxy = LinkProxy(("127.0.0.1", processes.broker.port), port=port).start()
    try:
        replicates(near, far, "after")
        replicates(far, near, "back")
        assert "Connection refused" in far.log()
    finally:
        proxy.stop()


@pytest.mark.slow
def test_a_link_that_stalls_then_returns(processes: Processes, link: LinkProxy) -> None:
    """The link forwards nothing for 25 s (a half-open connection): keepalive notices, and the
    server dials again until the link returns."""
    near = processes.server("near")
    far = processes.server("far", ["--broker", link.address])
    replicates(near, far, "before")
    link.set("stall")
    time.sleep(25)
    link.set("pass")
    replicates(near, far, "after", timeout=30)
    replicates(far, near, "back")


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason="mosquitto's dynamic security plugin is not installed")
def test_a_refused_subscription_is_said_and_counts_as_not_connected(processes: Processes) -> None:
    """A broker whose ACL refuses the digest topic: the server says so in one line, does not
    report SERVING, and Admin and the metrics say it is not connected. (Mosquitto 2.0's acl_file
    grants every subscription and filters deliveries instead; its dynamic security plugin refuses.)"""
    cluster = processes.cluster
    dynsec = processes.log_dir / "dynsec.json"
    deny = {"acltype": "subscribePattern", "topic": f"{cluster}/digest", "priority": 0, "allow": False}
    allow = dict.fromkeys(("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"), True)
    dynsec.write_text(
        json.dumps(
            {
                "defaultACLAccess": allow,
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "deaf"}], "clients": []}],
                "anonymousGroup": "anonymous",
                "roles": [{"rolename": "deaf", "acls": [deny]}],
            }
        )
    )
    port = processes.port()
    config = processes.log_dir / "deny.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\nsys_interval 1\n"
    )
    broker = Process("mosquitto-deny", [str(mosquitto_binary()), "-c", str(config)], processes.log_dir)
    processes.started.append(broker)
    broker.start()
    wait_for("the broker", lambda: port_open(port))
    metrics_port = processes.port()
    deaf = processes.server(
        "deaf", ["--broker", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port)], wait=False
    )
    wait_for("the refusal in the log", lambda: "refused the subscription" in deaf.log())
    time.sleep(4)  # what a joiner alone on a settled broker needs to report SERVING
    assert deaf.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not deaf.status().connected
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert "kvs_replication_broker_connected 0.0" in scraped
    assert deaf.log().count("refused the subscription") == 1, deaf.log()
    assert f"{cluster}/digest" in deaf.log()


def test_the_first_broker_that_answers_is_used(processes: Processes) -> None:
    """--broker DEAD,LIVE (in KVS_BROKER here): the server skips what does not answer, says so."""
    dead = f"127.0.0.1:{processes.port()}"
    live = processes.broker.address
    s1 = processes.server("s1")
    s2 = processes.server("s2", env={"KVS_BROKER": f"{dead},{live}"})
    assert s2.status().broker == live
    assert dead in s2.log()
    replicates(s1, s2, "k")
