"""One cluster across sites: real mosquittos, each on its own loopback address,
joined by bridges (docs/sites.md) whose links run through a proxy that cuts,
delays and stalls them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvs._gen import kvs_pb2 as pb
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, converged, run_admin, wait_for
from tests.e2e.sites import Site, crosses
from tests.e2e.test_faults import Writer


@pytest.fixture
def sites(processes: Processes) -> Iterator[list[Site]]:
    """Two sites, a and b: b's broker bridges to a's."""
    a = Site(processes.log_dir, "a", 2, processes.cluster)
    b = Site(processes.log_dir, "b", 3, processes.cluster)
    processes.started += [a, b]
    a.start()
    b.bridge_to(a)
    b.start()
    crosses(b, a)
    crosses(a, b)
    yield [a, b]
    b.stop_links()


def server(processes: Processes, name: str, *sites: Site, wait: bool = True) -> KvsServer:
    return processes.server(name, ["--broker", ",".join(site.address for site in sites)], wait=wait)


def replicates(source: KvsServer, target: KvsServer, key: str, timeout: float = 10.0) -> None:
    source.stub.Put(pb.KeyValueRequest(key=key, val=key))
    wait_for(f"{key} on {target.name}", lambda: target.stub.Get(pb.KeyRequest(key=key)).val == key, timeout)


def test_replication_across_a_bridge(processes: Processes, sites: list[Site]) -> None:
    a, b = sites
    s1, s2 = server(processes, "s1", a), server(processes, "s2", b)
    replicates(s1, s2, "from-a")
    replicates(s2, s1, "from-b")
    s3 = server(processes, "s3", b)  # a joiner on the far site
    assert s3.stub.Get(pb.KeyRequest(key="from-a")).val == "from-a"
    converged([s1, s2, s3])


def test_failover_to_another_sites_broker(processes: Processes, sites: list[Site]) -> None:
    """kill -9 of site b's broker under writes: b's servers move to a's broker (--broker b,a),
    say so, and nothing acknowledged is lost."""
    a, b = sites
    s1 = server(processes, "s1", a, b)
    s2 = server(processes, "s2", b, a)
    assert s2.status().broker == b.address
    with Writer([s1, s2], "w") as writer:
        writer.wait_for(200)
        b.kill()
        wait_for("s2 on a's broker", lambda: s2.status().broker == a.address and s2.status().connected)
        writer.wait_for(200)
    assert f"moved from broker {b.address} to broker {a.address}" in s2.log()
    dump = converged([s1, s2], timeout=30)
    held = {fragment.key for fragment in dump}
    lost = [key for key in writer.acknowledged if key not in held]
    print(f"acked {len(writer.acknowledged)} lost {len(lost)}")
    assert not lost
    status = run_admin("status", f"127.0.0.1:{s2.port}")
    assert a.address in status.stdout, status.stdout
