"""The Replicator over a transport the test holds: each metric moves on its event, and only then; a
transfer waits for the broker to acknowledge what it holds (kvs.replication.adapter.SEND_WINDOW)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvs.metrics import Metrics
from kvs.replication import adapter
from kvs.replication.adapter import FLUSH_EVERY, FLUSH_LOADED, Replicator
from kvs.replication.codec import Batch, Codec, Digest, Message, Transfer
from kvs.replication.sending import WRITE_WINDOW
from kvs.replication.sync import Sync
from kvs.replication.transport import Listener, Subscriptions
from kvs.storage.store import BUCKETS, Fragment, Store
from tests.clock import Clock
from tests.sim import SimClock, SimLoop

CLUSTER, KEY = "c", b"key"
ZERO = (0,) * BUCKETS


class Transport:
    """Records what the replicator publishes; the test plays the broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.broker = "test"
        self.connected = True
        self.writes_in_flight = 0
        self.unacknowledged_bytes = 0
        self.listener: Listener | None = None

    def open(
        self, client_id: str, will: tuple[str, bytes], subs: Subscriptions, listener: Listener
    ) -> Transport:
        self.listener = listener
        return self

    async def connect(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
        self.published.append((topic, payload))

    def hold(self, held: bool) -> None:
        pass

    async def stop(self, goodbye: tuple[str, bytes]) -> None:
        pass


class World:
    """One replicator "s1" (metrics on), and a peer "s2" whose messages the test makes."""

    def __init__(self, loop: SimLoop) -> None:
        self.loop = loop
        self.transport = Transport()
        self.metrics = Metrics()
        self.store = Store(Clock())
        core = Sync("s1", 1.0, epoch=100, fresh=True)
        self.replicator = Replicator(
            self.store, core, CLUSTER, KEY, self.transport.open, clock=SimClock(loop), metrics=self.metrics
        )
        self.s2 = Codec(CLUSTER, "s2", KEY, epoch=200, clock=SimClock(loop).wall_ms)  # our clock: fresh

    async def join(self) -> None:
        """Connects, sees s2's presence, then its own presence echo: it serves."""
        await self.replicator.start()
        self.replicator.on_connected()
        self.replicator.on_subscribed()
        self.hear(f"{CLUSTER}/peers/s2", self.s2.presence())
        await self.settle()
        [(topic, ours)] = [(t, p) for t, p in self.transport.published if t == f"{CLUSTER}/peers/s1"]
        self.hear(topic, ours)  # the echo: s1 asks s2 for its state (request 101: its epoch + 1)
        await self.settle()
        for answer in self.s2.transfer([], answers=101, to="s1"):
            self.hear(f"{CLUSTER}/to/s1", answer)
        await self.settle()
        assert self.replicator.caught_up.is_set()

    def hear(self, topic: str, payload: bytes) -> None:
        self.replicator.on_message(topic, payload, False)

    async def settle(self) -> None:
        await asyncio.sleep(0.01)  # simulated: the work queue runs

    def value(self, name: str, **labels: str) -> float:
        text = generate_latest(self.metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise KeyError(name)


def run(scenario: Callable[[World], Coroutine[Any, Any, None]]) -> None:
    loop = SimLoop()

    async def main() -> None:
        world = World(loop)
        await world.join()
        await scenario(world)
        await world.replicator.stop()
        await world.settle()

    loop.run_until_complete(main())
    loop.close()


def test_a_batch_counts_as_applied_once_and_its_replay_as_dropped() -> None:
    async def scenario(w: World) -> None:
        batch = w.s2.batch([Fragment("k", 0, ((5, "v"),))], seq=1)
        w.hear(f"{CLUSTER}/batch", batch)
        w.hear(f"{CLUSTER}/batch", batch)  # the broker sends it again (QoS 1), or someone replays it
        w.hear(f"{CLUSTER}/batch", b"\x02" + bytes(40))  # no valid tag
        await w.settle()
        assert w.store.get("k").val == "v"
        assert w.value("kvs_replication_batches_applied_total") == 1
        assert w.value("kvs_replication_bytes_applied_total") == len(batch)
        assert w.value("kvs_replication_messages_dropped_total", reason="replayed") == 1
        assert w.value("kvs_replication_messages_dropped_total", reason="unauthenticated") == 1

    run(scenario)


def test_a_lost_batch_answer_is_no_repair_and_a_repair_counts_its_buckets() -> None:
    async def scenario(w: World) -> None:
        inbox = f"{CLUSTER}/to/s1"
        w.replicator.publish([Fragment("a", 0, ((1, "x"),))])  # our batch 1, kept
        await w.settle()
        w.hear(inbox, w.s2.digest(Digest(ZERO, request=5, since=1), to="s1"))  # s2 lost it
        await w.settle()
        assert w.value("kvs_replication_lost_batches_answered_total", sent="batches") == 1
        assert w.value("kvs_replication_repairs_started_total") == 0
        differs = (1,) * 3 + (0,) * (BUCKETS - 3)
        w.hear(f"{CLUSTER}/digest", w.s2.digest(Digest(differs)))
        assert w.value("kvs_replication_peers_differing") == 0  # not yet applied: counted on the loop
        await w.settle()
        assert w.value("kvs_replication_peers_differing") == 1
        assert w.value("kvs_replication_repairs_started_total") == 0  # once is not yet stuck
        w.hear(f"{CLUSTER}/digest", w.s2.digest(Digest(differs)))
        await w.settle()
        assert w.value("kvs_replication_repairs_started_total") == 1
        assert w.value("kvs_replication_buckets_repaired_total") == 3
        assert w.value("kvs_replication_lost_batches_answered_total", sent="batches") == 1

    run(scenario)


def test_peers_up_moves_when_a_peer_comes_and_goes_and_a_full_window_skips_a_batch() -> None:
    async def scenario(w: World) -> None:
        assert w.value("kvs_replication_peers_up") == 1
        w.hear(f"{CLUSTER}/peers/s2", w.s2.presence(up=False))
        await w.settle()
        assert w.value("kvs_replication_peers_up") == 0
        w.transport.writes_in_flight = WRITE_WINDOW
        w.replicator.publish([Fragment("a", 0, ((1, "x"),))])
        await w.settle()
        assert w.value("kvs_replication_batches_skipped_total") == 1
        assert w.value("kvs_replication_batches_sent_total") == 0
        w.transport.writes_in_flight = 0
        w.replicator.publish([Fragment("b", 0, ((1, "x"),))])
        await w.settle()
        assert w.value("kvs_replication_batches_sent_total") == 1
        assert w.value("kvs_replication_batches_applied_total") == 0  # ours are not applied here

    run(scenario)


def test_batches_wait_longer_only_while_writes_come_fast() -> None:
    """A write after a quiet spell goes out at once; below LOADED writes a second batches go out every
    FLUSH_EVERY, from LOADED on every FLUSH_LOADED; every write is in exactly one batch, in order."""

    async def scenario(w: World) -> None:
        sent: list[tuple[float, list[str]]] = []
        codec = Codec(CLUSTER, "s2", KEY)

        def publish(topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
            if topic == f"{CLUSTER}/batch":
                body = codec.decode(payload).body
                assert isinstance(body, Batch)
                sent.append((w.loop.time(), [f.key for f in body.fragments]))

        w.transport.publish = publish  # type: ignore[method-assign]
        written: list[str] = []

        async def write(count: int, every: float) -> list[float]:
            """`count` writes, one per `every` seconds; returns the gaps between the batches they made."""
            start = len(sent)
            for _ in range(count):
                written.append(f"k{len(written)}")
                w.replicator.publish([Fragment(written[-1], 0, ((1, "v"),))])
                await asyncio.sleep(every)
            await asyncio.sleep(FLUSH_LOADED)
            times = [at for at, _ in sent[start:]]
            return [round(b - a, 6) for a, b in itertools.pairwise(times)]

        await asyncio.sleep(1)
        quiet = w.loop.time()
        w.replicator.publish([Fragment("first", 0, ((1, "v"),))])
        written.append("first")
        await asyncio.sleep(FLUSH_EVERY / 2)
        assert [at for at, _ in sent] == [quiet]  # after a quiet spell: at once
        slow = await write(100, 1 / 1000)  # 1,000 writes a second
        assert set(slow[1:]) == {FLUSH_EVERY}
        await asyncio.sleep(1)
        fast = await write(1000, 1 / 4000)  # 4,000 a second
        assert set(fast[2:]) == {FLUSH_LOADED}  # from the second batch on: the first had come fast
        await asyncio.sleep(1)
        slow = await write(100, 1 / 1000)  # slow again: the short wait again
        assert set(slow[2:]) == {FLUSH_EVERY}
        assert [key for _, keys in sent for key in keys] == written

    run(scenario)


WINDOW = 100_000
VALUE = "v" * 10_000
KEYS = 100  # a store of 1 MB: ten windows


def test_a_transfer_waits_for_the_broker_to_acknowledge_what_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapter, "SEND_WINDOW", WINDOW)

    async def scenario(w: World) -> None:
        w.store.join([Fragment(f"k{i:03}", 0, ((1, VALUE),)) for i in range(KEYS)])
        sent = len(w.transport.published)
        unacknowledged = 0

        def publish(topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
            nonlocal unacknowledged
            w.transport.published.append((topic, payload))
            unacknowledged += len(payload)
            w.transport.unacknowledged_bytes = unacknowledged

        w.transport.publish = publish  # type: ignore[method-assign]
        w.hear(f"{CLUSTER}/to/s1", w.s2.digest(Digest(ZERO, request=5), to="s1"))  # s2 asks for everything
        rounds = 0
        while not any(isinstance(m.body, Transfer) and m.body.last for m in received(w, sent)):
            await w.settle()
            # Never more than the window and one message beyond it waits for the broker.
            assert unacknowledged <= WINDOW + 300_000
            unacknowledged = w.transport.unacknowledged_bytes = 0  # the broker acknowledges it all
            rounds += 1
        assert rounds >= KEYS * len(VALUE) // (WINDOW + 300_000)
        keys = {f.key for m in received(w, sent) if isinstance(m.body, Transfer) for f in m.body.fragments}
        assert keys == {f"k{i:03}" for i in range(KEYS)}

    run(scenario)


def received(w: World, since: int) -> list[Message]:
    s2 = Codec(CLUSTER, "s2", KEY, epoch=200, clock=lambda: 1)
    return [s2.decode(p) for t, p in w.transport.published[since:] if t == f"{CLUSTER}/to/s2"]


def test_many_small_batches_are_applied_in_slices_that_let_other_calls_in() -> None:
    """A peer's PutAll arrives as thousands of small batches: joined all in one turn of the loop, they
    kept a Get on the replica waiting (issue 17). A task that reads between the replicator's steps
    must see the keys arrive a slice at a time."""
    count = 1_000

    async def scenario(w: World) -> None:
        for i in range(count):
            w.hear(f"{CLUSTER}/batch", w.s2.batch([Fragment(f"k{i:04}", 0, ((5, "v"),))], seq=i + 1))
        seen = [w.store.key_count()]
        while seen[-1] < count and len(seen) < 10 * count:
            await asyncio.sleep(0)  # what a Get does between two turns of the loop
            seen.append(w.store.key_count())
        partial = {n for n in seen if 0 < n < count}
        assert seen[-1] == count
        # A fragment of one version counts for 2 rows: about count * 2 / adapter.APPLY_ROWS slices.
        assert len(partial) >= count * 2 // adapter.APPLY_ROWS - 1

    run(scenario)


def test_a_transfer_is_read_and_encoded_in_slices_that_let_other_calls_in() -> None:
    """A joiner asks for everything: the sender reads, encodes and sends its state in slices. A task that
    runs between the replicator's steps must run many times before the final part goes out (it ran
    once a message, 256 K characters, 20 to 60 ms of work; issue 17)."""
    count = 3_000

    async def scenario(w: World) -> None:
        w.store.join([Fragment(f"k{i:04}", 0, ((1, "v" * 100),)) for i in range(count)])
        sent = len(w.transport.published)
        w.hear(f"{CLUSTER}/to/s1", w.s2.digest(Digest(ZERO, request=5), to="s1"))  # s2 asks for everything
        turns = 0
        while not any(isinstance(m.body, Transfer) and m.body.last for m in received(w, sent)):
            await asyncio.sleep(0)  # what a Get does between two turns of the loop
            turns += 1
            assert turns < 100_000, "the transfer did not end"
        keys = {f.key for m in received(w, sent) if isinstance(m.body, Transfer) for f in m.body.fragments}
        assert len(keys) == count
        assert turns >= count * 2 // adapter.APPLY_ROWS - 1  # a fragment of one version: 2 rows

    run(scenario)


def test_a_large_payload_is_decoded_in_slices_that_let_other_calls_in() -> None:
    """SPEC 3, guarantee 8: a 5 MB batch. Its tag and parse are C code; making its 20,000 fragments took
    one turn of 100 to 400 ms. A task that runs between the replicator's steps must run many times
    before the last key is in, and the reads it makes see the batch arrive a slice at a time."""
    count = 20_000

    async def scenario(w: World) -> None:
        big = [Fragment(f"k{i:05}", 0, ((5, "v" * 100),)) for i in range(count)]
        payload = w.s2.batch(big, seq=1)
        assert len(payload) > adapter.DECODE_AT_ONCE
        w.hear(f"{CLUSTER}/batch", payload)
        turns, decoding = 0, 0
        while w.store.get(big[-1].key).val != "v" * 100:
            await asyncio.sleep(0)  # what a Get does between two turns of the loop
            turns += 1
            decoding += not w.store.get(big[0].key).val  # not one key in yet: still decoding
            assert turns < 1_000_000, "the batch was not applied"
        await w.settle()
        assert w.store.key_count() == count
        assert w.value("kvs_replication_batches_applied_total") == 1
        # A slice makes 400 fragments (2 make a row's worth of work), or joins 100 (2 rows each).
        assert decoding >= count // (2 * adapter.DECODE_STEP) - 1
        assert turns >= decoding + count * 2 // adapter.APPLY_ROWS - 1

    run(scenario)
