"""A bad link between a server and its broker: the server keeps reconnecting,
says so, and replicates again once the link recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kvs._gen import kvs_pb2 as pb
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, wait_for
from tests.e2e.linkproxy import LinkProxy, Mode


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
