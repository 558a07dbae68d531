"""Replication through a real mosquitto between real servers (docs/contract.md, "Replication")."""

from __future__ import annotations

import contextlib
import json
import random
import select
import subprocess
import threading
from collections.abc import Callable

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen.replication_pb2 import WatchRequest
from kvs._gen.replication_pb2_grpc import AdminStub
from kvs.local.processes import wait_for
from tests.e2e.conftest import Processes
from tests.e2e.harness import ROOT, KvsServer, converged


def key(k: str, ver: int | None = None) -> pb.KeyRequest:
    return pb.KeyRequest(key=k) if ver is None else pb.KeyRequest(key=k, ver=ver)


def span(fr: str, to: str) -> pb.KeyRange:
    return pb.KeyRange(fr=key(fr), to=key(to))


def kv(k: str, v: str) -> pb.KeyValueRequest:
    return pb.KeyValueRequest(key=k, val=v)


def reply(k: str, v: str, ver: int) -> pb.KeyValueVersionReply:
    return pb.KeyValueVersionReply(key=k, val=v, ver=ver)


def eventually(server: KvsServer, request: pb.KeyRequest, expected: pb.KeyValueVersionReply) -> None:
    def seen() -> bool:
        return bool(server.stub.Get(request, timeout=5) == expected)

    wait_for(f"{server.name} to answer {expected}", seen, timeout=10, every=0.02)


def test_every_mutating_rpc_replicates_with_the_accepting_servers_version(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    put = s1.stub.Put(kv("p", "one"))
    eventually(s2, key("p"), reply("p", "one", put.ver))

    written = list(
        s1.stub.PutAll(iter([kv("a", "1"), kv("b", "2"), kv("c", "3"), kv("d", "4"), kv("t", "x")]))
    )
    for w, v in zip(written, "1234x", strict=True):
        eventually(s2, key(w.key), reply(w.key, v, w.ver))

    again = s1.stub.Put(kv("t", "y"))
    s1.stub.Trim(key("t"))
    eventually(s2, key("t", again.ver - 1), reply("t", "", again.ver - 1))
    assert s2.stub.Get(key("t")) == reply("t", "y", again.ver)

    s1.stub.Del(key("p"))
    eventually(s2, key("p"), reply("p", "", 0))
    list(s1.stub.DelRange(span("a", "b")))
    eventually(s2, key("b"), reply("b", "", 0))
    assert s2.stub.Get(key("a")) == reply("a", "", 0)
    list(s1.stub.DelAll(iter([key("c"), key("d")])))
    eventually(s2, key("d"), reply("d", "", 0))
    assert s2.stub.Get(key("c")) == reply("c", "", 0)
    assert [f.key for f in converged([s1, s2])] == ["a", "b", "c", "d", "p", "t"]  # tombstones kept


def test_a_write_on_either_server_is_read_on_the_other(processes: Processes) -> None:
    servers = processes.cluster_of(3)
    for i, server in enumerate(servers):
        written = server.stub.Put(kv(f"from-{i}", "hello"))
        for other in servers:
            eventually(other, key(f"from-{i}"), reply(f"from-{i}", "hello", written.ver))


def test_keys_and_values_with_separators_replicate_intact(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    odd = ["a,b", "a;b", 'a"b', "a(b", "a b", "a\nb", "ação", "键", "🙂", "\t", "x" * 10_000]
    versions = {text: s1.stub.Put(kv(text, text + "|" + text)).ver for text in odd}
    for text in odd:
        eventually(s2, key(text), reply(text, text + "|" + text, versions[text]))


def run_writers(
    servers: list[KvsServer], threads: int, writes: int, work: Callable[[KvsServer, int], None]
) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(writes):
                work(servers[(n + i) % len(servers)], n * writes + i)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    assert not errors, errors


def test_concurrent_writes_on_overlapping_keys_end_in_identical_dumps(processes: Processes) -> None:
    servers = processes.cluster_of(2)
    rng = random.Random(7)

    def work(server: KvsServer, i: int) -> None:
        k = f"k{rng.randrange(40)}"
        action = rng.random()
        if action < 0.7:
            server.stub.Put(kv(k, f"v{i}"), timeout=10)
        elif action < 0.8:
            server.stub.Del(key(k), timeout=10)
        elif action < 0.9:
            server.stub.Trim(key(k), timeout=10)
        else:
            list(server.stub.PutAll(iter([kv(k, "a"), kv(k + "x", "b")]), timeout=10))

    run_writers(servers, threads=6, writes=150, work=work)
    dump = converged(servers)
    assert len(dump) > 40


def test_a_late_joiner_has_the_whole_state_when_it_reports_serving(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    for batch in range(6):
        list(s1.stub.PutAll(iter([kv(f"key{batch}-{i:04}", f"value {i}") for i in range(500)])))
        list(s2.stub.PutAll(iter([kv(f"key{batch}-{i:04}", f"second {i}") for i in range(0, 500, 3)])))
    list(s2.stub.DelRange(span("key1-", "key1-~")))
    for i in range(0, 500, 7):
        s1.stub.Trim(key(f"key2-{i:04}"))
        s2.stub.Del(key(f"key3-{i:04}"))
    before = converged([s1, s2])
    # A long sync interval: only the catch-up itself can bring s3 the state.
    s3 = processes.server("s3", sync_interval=600)
    assert s3.dump() == before
    assert s3.stub.Get(key("key0-0003")) == s1.stub.Get(key("key0-0003"))
    keys = s1.status().keys
    assert keys == 3000 - 500 - 72  # key1-* deleted, every 7th key3-* deleted
    assert f"caught up: {keys} keys" in s3.log()


def test_writes_during_a_late_joiners_catch_up_are_not_lost(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2, sync_interval=600)
    list(s1.stub.PutAll(iter([kv(f"bulk{i:05}", "x" * 100) for i in range(20_000)])))
    converged([s1, s2])
    done = threading.Event()
    acknowledged: dict[str, int] = {}

    def keep_writing() -> None:
        i = 0
        while not done.is_set():
            target = (s1, s2)[i % 2]
            acknowledged[f"during{i}"] = target.stub.Put(kv(f"during{i}", "v"), timeout=10).ver
            i += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        s3 = processes.server("s3", sync_interval=600)
    finally:
        done.set()
        writer.join(30)
    assert len(acknowledged) > 5
    for k, ver in acknowledged.items():
        eventually(s3, key(k), reply(k, "v", ver))
    converged([s1, s2, s3])


def test_a_restarted_server_catches_up_on_what_it_missed(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    s1.stub.Put(kv("before", "1"))
    port = s2.port
    assert s2.stop() == 0
    wait_for("s1 to see s2 leave", lambda: "peer s2 left" in s1.log())
    s1.stub.Put(kv("while-away", "2"))
    s1.stub.Del(key("before"))
    s2 = processes.server("s2", port=port)
    assert s2.dump() == s1.dump()


def test_clusters_sharing_a_broker_do_not_see_each_other(processes: Processes) -> None:
    s1 = processes.server("s1")
    other = processes.server("s1", ["--cluster", "elsewhere"])
    s1.stub.Put(kv("mine", "1"))
    other.stub.Put(kv("theirs", "2"))
    s1.stub.Put(kv("marker", "3"))
    wait_for("s1's own write", lambda: s1.stub.Get(key("marker")).ver > 0)
    assert other.stub.Get(key("mine")) == reply("mine", "", 0)
    assert s1.stub.Get(key("theirs")) == reply("theirs", "", 0)
    assert "seen" not in s1.log()
    assert "seen" not in other.log()


def test_health_is_not_serving_until_caught_up(processes: Processes) -> None:
    s1 = processes.server("s1")
    list(s1.stub.PutAll(iter([kv(f"k{i:06}", "v" * 50) for i in range(30_000)])))
    s2 = processes.server("s2", wait=False)
    statuses: list[int | None] = []
    while True:
        status = s2.health()
        statuses.append(status)
        if status == 1:  # SERVING
            break
        assert s2.running(), s2.log()
    assert s2.status().keys == 30_000
    assert 2 in statuses or None in statuses, statuses  # it said NOT_SERVING (or nothing) first


def test_calls_during_catch_up_wait_and_then_see_the_whole_state(processes: Processes) -> None:
    s1 = processes.server("s1")
    list(s1.stub.PutAll(iter([kv(f"k{i:06}", "v" * 50) for i in range(30_000)])))
    last = s1.stub.Get(key("k029999"))
    s2 = processes.server("s2", wait=False)
    wait_for("s2 to listen", lambda: s2.health() is not None)
    try:
        assert s2.stub.Get(key("k029999"), timeout=30) == last
    except grpc.RpcError as error:  # pragma: no cover - reported with the log
        raise AssertionError(s2.log()) from error


def test_admin_watch_shows_the_batches_a_server_applies(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    watcher = subprocess.Popen(
        [str(ROOT / "scripts" / "admin.sh"), "watch", f"127.0.0.1:{s2.port}"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    output = watcher.stdout
    assert output is not None
    try:
        written: list[str] = []

        def a_line() -> str | None:
            # Nothing says when the stream is open: write until the watcher prints.
            written.append(f"w{len(written)}")
            s1.stub.Put(kv(written[-1], "v"))
            ready, _, _ = select.select([output], [], [], 0.1)
            return output.readline() if ready else None

        line = json.loads(wait_for("the watcher's first line", a_line, timeout=20, every=0))
        assert line["origin"] == "s1"
        assert line["keys"]
        assert set(line["keys"]) <= set(written)
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_a_stream_of_writes_replicates_in_batches_not_one_message_each(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    stream = AdminStub(s2.channel).Watch(WatchRequest(), timeout=60)
    batches: list[list[str]] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):  # the cancel() at the end
            batches.extend(list(applied.keys) for applied in stream)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        marker = iter(range(1_000_000))
        wait_for(  # the stream is open once a marker write comes through it
            "the watch stream",
            lambda: s1.stub.Put(kv(f"marker{next(marker)}", "m")) and any(batches),
            every=0.05,
        )
        keys = [f"bulk{i:03}" for i in range(300)]
        list(s1.stub.PutAll(iter([kv(k, "v") for k in keys])))
        wait_for("every key to arrive", lambda: {k for b in batches for k in b} >= set(keys))
        carrying = [b for b in batches if any(k.startswith("bulk") for k in b)]
        assert len(carrying) < len(keys)  # one MQTT message per write would be one batch each
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]
        reader.join(10)
