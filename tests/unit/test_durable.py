"""The store in a file, the group commit, and the checks of a --data-dir (no processes)."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.errors import DataDirError, NotDurable
from kvs.service.replicated import ReplicatedStore
from kvs.storage.datadir import STORE_FILE, open_data_dir
from kvs.storage.durable import AHEAD_BYTES, AHEAD_ITEMS, GroupCommit
from kvs.storage.store import Fragment, Store
from tests.clock import Clock
from tests.state import everything


def seen_by_a_reader(path: Path) -> set[str]:
    """The keys another reader of the file sees: what is committed (WAL lets it read beside the writer)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {key for (key,) in db.execute("SELECT DISTINCT key FROM versions")}


def fill(store: Store) -> None:
    for i in range(50):
        store.put(f"k{i:02}", "a")
        store.put(f"k{i:02}", "b")
    store.trim("k01")
    store.delete("k02")
    store.delete_range("k10", "k19")
    store.join([Fragment("peer", 7, ((8, "x"), (9, "y"))), Fragment("tomb", 99)])


def test_a_reopened_store_has_the_same_state_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(Clock(), path)
    fill(store)
    state, digest = everything(store), store.digest()
    store.close()

    again = Store(Clock(), path)
    assert everything(again) == state
    assert again.digest() == digest
    again.rebuild_digest()  # the saved digest is the one the rows give
    assert again.digest() == digest


def test_a_store_in_memory_and_one_on_disk_agree(tmp_path: Path) -> None:
    memory, disk = Store(Clock()), Store(Clock(), tmp_path / "s.sqlite", fsync=True)
    fill(memory)
    fill(disk)
    assert everything(disk) == everything(memory)
    assert disk.digest() == memory.digest()


def test_changes_not_committed_are_gone_after_a_crash_and_the_digest_matches(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = Store(Clock(), path)
    store.put("kept", "1")
    committed = (everything(store), store.digest())
    store.defer_commits(lambda: None)  # nobody commits: as if killed before the group commit
    store.put("lost", "2")
    store.delete("kept")
    assert seen_by_a_reader(path) == {"kept"}  # neither change is committed
    store._db.close()  # a crash: SQLite rolls the open transaction back

    again = Store(Clock(), path)
    assert (everything(again), again.digest()) == committed


def test_group_commit_costs_nothing_in_memory() -> None:
    async def run() -> int:
        store = Store(Clock())
        commits = GroupCommit(store)
        store.put("k", "v")
        await commits.durable()
        return commits.commits

    assert asyncio.run(run()) == 0


def test_the_writes_of_one_turn_share_one_commit_and_reply_after_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def run() -> None:
        store = Store(Clock(), path)
        commits = GroupCommit(store)
        seen: list[bool] = []

        async def write(key: str) -> None:
            store.put(key, "v")
            await commits.durable()
            seen.append(key in seen_by_a_reader(path))  # True: resumed after the COMMIT

        await asyncio.gather(*(write(f"k{i}") for i in range(10)))
        assert seen == [True] * 10
        assert commits.commits == 1
        store.join([Fragment("from-a-peer", 0, ((5, "v"),))])  # replication commits the same way
        assert "from-a-peer" not in seen_by_a_reader(path)
        await commits.durable()
        assert "from-a-peer" in seen_by_a_reader(path)
        assert commits.commits == 2

    asyncio.run(run())


def test_a_put_skips_waiting_only_when_nothing_is_pending(tmp_path: Path) -> None:
    """`settled` lets a Put skip awaiting `durable()` (a coroutine a call, in memory): on disk a Put
    still returns only once committed, and after a failed commit no write skips the wait."""

    async def run() -> None:
        memory = GroupCommit(Store(Clock()))
        await ReplicatedStore(memory._store, lambda fragments: None, memory).put("k", "v")
        assert memory.settled

        path = tmp_path / "s.sqlite"
        store = Store(Clock(), path)
        commits = GroupCommit(store)
        replicated = ReplicatedStore(store, lambda fragments: None, commits)
        assert commits.settled
        store.put("before", "v")  # a write of this turn, not yet committed
        assert not commits.settled
        await replicated.put("k", "v")
        assert {"before", "k"} <= seen_by_a_reader(path)  # the Put returned after the COMMIT
        assert commits.settled

        store.put("doomed", "v")
        store._db.close()  # the COMMIT will raise
        with pytest.raises(NotDurable):
            await commits.durable()
        assert not commits.settled  # so every later write still awaits durable(), which raises

    asyncio.run(run())


def test_a_failed_commit_fails_the_waiters_and_stops_the_server(tmp_path: Path) -> None:
    async def run() -> None:
        store = Store(Clock(), tmp_path / "s.sqlite")
        failures: list[str] = []
        commits = GroupCommit(store, lambda: failures.append("stop"))
        store.put("k", "v")
        store._db.close()  # the COMMIT will raise
        with pytest.raises(NotDurable):
            await commits.durable()
        with pytest.raises(NotDurable):  # and every later write too
            await commits.durable()
        assert failures == ["stop"]

    asyncio.run(run())


def test_a_data_dir_is_created_locked_and_reopened(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    first = open_data_dir(data, "c1")
    assert first.store_path == data / STORE_FILE
    with pytest.raises(DataDirError, match="in use by another kvs server"):
        open_data_dir(data, "c1")
    first.close()
    open_data_dir(data, "c1").close()
    with pytest.raises(DataDirError, match="holds a store of cluster 'c1', not 'c2'"):
        open_data_dir(data, "c2")


def test_a_store_of_another_format_is_refused(tmp_path: Path) -> None:
    open_data_dir(tmp_path, "c").close()
    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
    db.close()
    with pytest.raises(DataDirError, match="has format 99; this kvs reads format 1"):
        open_data_dir(tmp_path, "c")


def test_a_write_ahead_log_without_its_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / f"{STORE_FILE}-wal").write_bytes(b"old frames")
    with pytest.raises(DataDirError, match="move it away"):
        open_data_dir(tmp_path, "c")
    assert not (tmp_path / STORE_FILE).exists()


def test_closing_commits_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def run() -> None:
        store = Store(Clock(), path)
        commits = GroupCommit(store)
        store.put("last", "write")
        await commits.close()  # before the turn that would have committed it
        assert seen_by_a_reader(path) == {"last"}
        store.close()

    asyncio.run(run())
    assert Store(Clock(), path).get("last").val == "write"


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcd"), st.sampled_from(["x", "y"])),
        st.tuples(st.just("delete"), st.sampled_from("abcd"), st.just("")),
        st.tuples(st.just("trim"), st.sampled_from("abcd"), st.just("")),
        st.tuples(st.just("delete_range"), st.sampled_from("ab"), st.sampled_from("cd")),
        st.tuples(st.just("join"), st.sampled_from("abcd"), st.sampled_from(["x", "y"])),
        st.tuples(st.just("commit"), st.just(""), st.just("")),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)  # disk work: timing varies on a shared machine
@given(OPERATIONS)
def test_after_a_crash_a_store_holds_its_last_commit_with_its_digest(
    operations: list[tuple[str, str, str]],
) -> None:
    """Every write path runs in the transaction that saves the digest: a crash never splits them."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "s.sqlite"
        clock = Clock()
        store = Store(clock, path)
        store.defer_commits(lambda: None)
        committed = (everything(store), store.digest())
        for name, a, b in operations:
            clock.now += 1
            if name == "put":
                store.put(a, b)
            elif name in ("delete", "trim"):
                getattr(store, name)(a)
            elif name == "delete_range":
                store.delete_range(a, b)
            elif name == "join":
                store.join([Fragment(a, clock.now - 3, ((clock.now + 5, b),))])
            else:
                store.commit()
                committed = (everything(store), store.digest())
        store._db.close()  # killed: what was not committed is rolled back

        again = Store(Clock(), path)
        assert (everything(again), again.digest()) == committed
        again.rebuild_digest()
        assert again.digest() == committed[1]
        again.close()


async def _stream(count: int, then: Exception | None = None) -> AsyncIterator[int]:
    for i in range(count):
        if i % 50 == 0:
            await asyncio.sleep(0)  # arrivals in bursts, as from a socket
        yield i
    if then:
        raise then


async def _groups(commits: GroupCommit, items: AsyncIterator[int], size: int = 1) -> list[list[int]]:
    groups = []
    async for group in commits.ahead(items, lambda item: size):
        groups.append(group)
        for _ in range(10):  # the handler's commit and replies take a while
            await asyncio.sleep(0)
    return groups


def test_a_stream_is_read_ahead_on_disk_in_order_and_in_bounded_groups(tmp_path: Path) -> None:
    async def run() -> None:
        commits = GroupCommit(Store(Clock(), tmp_path / "s.sqlite"))
        groups = await _groups(commits, _stream(2000))
        assert [i for group in groups for i in group] == list(range(2000))
        assert max(map(len, groups)) == AHEAD_ITEMS  # a full buffer, and no more
        big = await _groups(commits, _stream(100), size=AHEAD_BYTES // 4)
        assert max(map(len, big)) == 4  # the byte bound

    asyncio.run(run())


def test_a_stream_that_breaks_yields_what_came_before_then_the_error(tmp_path: Path) -> None:
    async def run() -> None:
        commits = GroupCommit(Store(Clock(), tmp_path / "s.sqlite"))
        seen: list[int] = []

        async def read() -> None:
            async for group in commits.ahead(_stream(120, ValueError("broken")), lambda item: 1):
                seen.extend(group)

        with pytest.raises(ValueError, match="broken"):
            await read()
        assert seen == list(range(120))

    asyncio.run(run())


def test_in_memory_a_stream_is_not_read_ahead() -> None:
    async def run() -> list[list[int]]:
        return await _groups(GroupCommit(Store(Clock())), _stream(10))

    assert asyncio.run(run()) == [[i] for i in range(10)]
