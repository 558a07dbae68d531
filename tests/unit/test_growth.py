"""Growth over time in the store: its size as the quota counts it, --keep-versions at a put,
retention's floors (docs/operations.md, "Growth over time"), and space given back to the disk."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.storage.datadir import STORE_FILE, open_data_dir
from kvs.storage.store import KEEP_INLINE, Bound, Entry, Fragment, Store
from tests.clock import Clock
from tests.strategies import fragments


def whole(store: Store) -> list[Fragment]:
    """The whole state, a page at a time."""
    state: list[Fragment] = []
    while page := store.export_page(state[-1].key if state else "", 100):
        state += page
    return state


def counted(store: Store) -> int:
    """The size recounted from the state, as docs/operations.md defines it."""
    return sum(
        (len(f.key.encode()) + 8 if f.floor else 0)
        + sum(len(f.key.encode()) + len(val.encode()) + 8 for _, val in f.versions)
        for f in whole(store)
    )


@settings(deadline=None)
@given(st.lists(fragments), st.lists(st.sampled_from(["a", "b", "é"]), max_size=6))
def test_the_size_follows_every_change(batch: list[Fragment], churn: list[str]) -> None:
    clock = Clock(20)
    store = Store(clock)
    store.join(batch)
    assert store.size == counted(store)
    for i, key in enumerate(churn):
        [store.put, store.trim, store.delete][i % 3](key, *(["ação"] if i % 3 == 0 else []))  # type: ignore[operator]
        assert store.size == counted(store)
    store.join(batch)  # the same values again, and greater ones under taken versions
    store.join([Fragment(f.key, 0, tuple((v, val + "~") for v, val in f.versions)) for f in batch])
    assert store.size == counted(store)


def test_the_size_is_kept_with_the_file(tmp_path: Path) -> None:
    data_dir = open_data_dir(tmp_path, "kvs")
    store = Store(Clock(), data_dir.store_path)
    store.put("k", "v" * 100)
    store.put("é", "ü")
    store.close()
    reopened = Store(Clock(), data_dir.store_path)
    assert reopened.size == (1 + 100 + 8) + (2 + 2 + 8)
    reopened.close()
    with contextlib.closing(sqlite3.connect(data_dir.store_path)) as db:  # a file from before sizes
        db.execute("DELETE FROM digest WHERE bucket = -2")
        db.commit()
    assert Store(Clock(), data_dir.store_path).size == (1 + 100 + 8) + (2 + 2 + 8)


def test_keep_versions_raises_the_floor_in_the_puts_own_fragment() -> None:
    store = Store(Clock(1000), keep_versions=2)
    assert store.put("k", "a")[1] == Fragment("k", 0, ((1000, "a"),))
    assert store.put("k", "b")[1] == Fragment("k", 0, ((1001, "b"),))
    assert store.put("k", "c")[1] == Fragment("k", 1001, ((1002, "c"),))
    assert whole(store) == [Fragment("k", 1001, ((1001, "b"), (1002, "c")))]
    # A peer without --keep-versions applies the same fragments and holds the same state.
    peer = Store(Clock())
    peer.join([Fragment("k", 0, ((1000, "a"),)), Fragment("k", 0, ((1001, "b"),))])
    peer.join([Fragment("k", 1001, ((1002, "c"),))])
    assert whole(peer) == whole(store)
    assert peer.digest() == store.digest()


def test_a_long_history_is_left_to_the_sweep_at_a_put() -> None:
    store = Store(Clock(1000))
    for i in range(KEEP_INLINE + 5):
        store.put("k", str(i))
    store.keep_versions = 2  # a restart with the flag: the put drops nothing at once (no stall)...
    assert store.put("k", "last")[1].floor == 0
    # ...and the sweep names the floor, which the adapter reaches in slices.
    assert store.retention_page("", 10, 2, None) == [Bound("k", 1000 + KEEP_INLINE + 4)]


def test_keep_versions_applies_to_what_the_join_adds() -> None:
    store = Store(Clock(1000), keep_versions=2)
    store.join([Fragment("k", 0, ((1, "a"), (2, "b")))])
    store.join([Fragment("k", 0, ((3, "c"),))])  # written on a peer: same floor as the peer's
    assert whole(store) == [Fragment("k", 2, ((2, "b"), (3, "c")))]


def test_retention_floors() -> None:
    clock = Clock(1000)
    store = Store(clock)
    for key, count in (("one", 1), ("three", 3), ("five", 5)):
        for i in range(count):
            clock.now = 1000 + 10 * i
            store.put(key, str(i))
    # versions: one {1000}; three {1000, 1010, 1020}; five {1000, ..., 1040}
    assert store.retention_page("", 10, 2, None) == [
        Bound("five", 1030),
        Bound("one", 0),
        Bound("three", 1010),
    ]
    assert store.retention_page("", 10, None, 1015) == [
        Bound("five", 1015),
        Bound("one", 0),  # the newest always stays, however old
        Bound("three", 1015),
    ]
    assert store.retention_page("", 10, None, 5000) == [
        Bound("five", 1040),
        Bound("one", 0),
        Bound("three", 1020),
    ]
    assert store.retention_page("", 10, 4, 1015) == [
        Bound("five", 1015),
        Bound("one", 0),
        Bound("three", 1015),
    ]
    assert store.retention_page("five", 10, 2, None) == [Bound("one", 0), Bound("three", 1010)]
    assert store.retention_page("", 1, 2, None) == [Bound("five", 1030)]


def test_raised_floors_are_fragments_that_bring_a_peer_to_the_same_state() -> None:
    clock = Clock(1000)
    store, peer = Store(clock), Store(clock)
    for i in range(5):
        clock.now = 1000 + i
        peer.join([store.put("k", str(i))[1]])
    raised = store.raise_floors(store.retention_page("", 10, 2, None))
    assert raised == [Fragment("k", floor=1003)]
    peer.join(raised)
    assert whole(peer) == whole(store) == [Fragment("k", 1003, ((1003, "3"), (1004, "4")))]
    assert peer.digest() == store.digest()


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("xy"), st.integers(0, 3000)), max_size=30),
    st.integers(0, 3000),
)
def test_replicas_with_skewed_clocks_agree_once_their_floors_are_exchanged(
    writes: list[tuple[str, str, int]], skew: int
) -> None:
    # Two replicas, clocks `skew` ms apart, each sweeping with --keep-versions 3 --retention 2s
    # after every write and publishing what it raised, as kvs.service.upkeep does.
    clocks = [Clock(10_000), Clock(10_000 + skew)]
    replicas = [Store(clock, keep_versions=3) for clock in clocks]
    for i, (key, server, step) in enumerate(writes):
        for clock in clocks:
            clock.now += step
        one, other = (replicas[0], replicas[1]) if server == "x" else (replicas[1], replicas[0])
        sent = [one.put(key, str(i))[1]]
        clock = clocks[replicas.index(one)]
        sent += one.raise_floors(one.retention_page("", 10, 3, clock.now - 2000))
        other.join(sent)
    assert whole(replicas[0]) == whole(replicas[1])
    assert replicas[0].digest() == replicas[1].digest()


def test_freed_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    data_dir = open_data_dir(tmp_path, "kvs")
    store = Store(Clock(), data_dir.store_path)
    for i in range(2000):
        store.put(f"k{i:05}", "v" * 1000)
    store.checkpoint()
    full = (tmp_path / STORE_FILE).stat().st_size
    for i in range(2000):
        store.delete(f"k{i:05}")
    assert store.free_pages() > 400
    while store.free_pages() > 10:
        assert store.give_back(100)
    store.checkpoint()
    assert (tmp_path / STORE_FILE).stat().st_size < full / 4
    store.close()


def test_the_read_at_a_dropped_version_of_docs_contract() -> None:
    # docs/contract.md, "Growth over time": --keep-versions 2 after versions 100, 200 and 300 of k.
    clock = Clock(100)
    store = Store(clock, keep_versions=2)
    for ver, val in ((100, "a"), (200, "b"), (300, "c")):
        clock.now = ver
        store.put("k", val)
    assert store.get("k", 150) == Entry("k", "", 150)
    assert store.get("k", 250) == Entry("k", "b", 200)
    assert store.get("k") == Entry("k", "c", 300)
    assert store.get_range("k", "k", 150) == [Entry("k", "", 150)]
