"""The store alone: the semantics of docs/contract.md, the join, and the digest."""

from __future__ import annotations

import pytest

from kvs.errors import VersionExhausted
from kvs.replication.sending import state_pages
from kvs.storage.store import LAST_VERSION, MAX_VERSION, Entry, Fragment, Store, Written, bucket_of
from tests.clock import Clock
from tests.state import everything


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Store:
    return Store(clock)


def test_the_worked_history_of_the_module_docstring(store: Store, clock: Clock) -> None:
    assert store.put("color", "red")[0] == Written("color", "", 0, 1000)
    assert store.put("color", "blue")[0] == Written("color", "red", 1000, 1001)
    clock.now = 1500
    assert store.get("color", 1000) == Entry("color", "red", 1000)
    assert store.get("color", 999) == Entry("color", "", 999)
    clock.now = 1600
    assert store.put("color", "green")[0].ver == 1600
    clock.now = 1700
    assert store.trim("color") == (Entry("color", "green", 1600), Fragment("color", floor=1600))
    assert store.get("color", 1001) == Entry("color", "", 1001)
    clock.now = 1800
    assert store.delete("color") == (Entry("color", "green", 1600), Fragment("color", floor=1801))
    clock.now = 1801
    assert store.get("color") == Entry("color", "", 0)
    store.join([Fragment("color", versions=((1750, "pink"),))])
    assert store.get("color") == Entry("color", "", 0)
    clock.now = 1805
    assert store.put("color", "black")[0] == Written("color", "", 0, 1805)
    assert everything(store) == [Fragment("color", 1801, ((1805, "black"),))]


def test_many_puts_in_one_millisecond_get_increasing_versions(store: Store) -> None:
    versions = [store.put("k", str(i))[0].ver for i in range(100)]
    assert versions == list(range(1000, 1100))
    assert store.get("k", 1050) == Entry("k", "50", 1050)


def test_a_clock_that_goes_back_still_gives_a_newer_version(store: Store, clock: Clock) -> None:
    store.put("k", "a")
    clock.now = 10
    assert store.put("k", "b")[0] == Written("k", "a", 1000, 1001)


def test_put_returns_the_fragment_to_replicate(store: Store) -> None:
    written, fragment = store.put("k", "v")
    assert fragment == Fragment("k", 0, ((written.ver, "v"),))


def test_get_of_a_missing_key_is_version_zero(store: Store) -> None:
    assert store.get("nope") == Entry("nope", "", 0)
    assert store.get("nope", 5) == Entry("nope", "", 0)


@pytest.mark.parametrize("blank", [None, 0, -7])
def test_a_blank_version_reads_the_newest(store: Store, blank: int | None) -> None:
    store.put("k", "a")
    store.put("k", "b")
    assert store.get("k", blank) == Entry("k", "b", 1001)


def test_get_reads_the_greatest_version_at_or_below(store: Store, clock: Clock) -> None:
    store.put("k", "a")
    clock.now = 2000
    store.put("k", "b")
    assert store.get("k", 1999) == Entry("k", "a", 1000)
    assert store.get("k", 2000) == Entry("k", "b", 2000)
    assert store.get("k", 2**63 - 1) == Entry("k", "b", 2000)


def test_get_range_is_inclusive_ascending_in_byte_order(store: Store) -> None:
    keys = ["b", "a", "c", "B", "é", "z", "中", "😀", "a b", "a\nb", "d"]
    for key in keys:
        store.put(key, key.upper())
    got = [entry.key for entry in store.get_range("B", "😀")]
    assert got == sorted(keys, key=lambda k: k.encode())
    assert [entry.key for entry in store.get_range("a", "c")] == ["a", "a\nb", "a b", "b", "c"]
    assert store.get_range("x", "y") == []
    assert [e.key for e in store.get_range("c", "c")] == ["c"]


def test_get_range_at_a_version_echoes_it_for_keys_with_nothing_below(store: Store, clock: Clock) -> None:
    store.put("a", "old")
    clock.now = 2000
    store.put("a", "new")
    store.put("b", "only")
    assert store.get_range("a", "b", 1500) == [Entry("a", "old", 1000), Entry("b", "", 1500)]
    assert store.get_range("a", "b") == [Entry("a", "new", 2000), Entry("b", "only", 2000)]


def test_get_range_skips_tombstones(store: Store) -> None:
    store.put("a", "1")
    store.put("b", "2")
    store.delete("a")
    assert store.get_range("a", "b") == [Entry("b", "2", 1000)]


def test_delete_removes_every_version_and_reports_the_newest(store: Store, clock: Clock) -> None:
    store.put("k", "a")
    store.put("k", "b")
    removed, fragment = store.delete("k")
    assert removed == Entry("k", "b", 1001)
    assert fragment == Fragment("k", floor=1002)
    assert store.get("k") == Entry("k", "", 0)
    assert store.get("k", 1001) == Entry("k", "", 0)
    assert store.key_count() == 0


def test_delete_of_a_missing_key_changes_nothing(store: Store) -> None:
    assert store.delete("k") == (Entry("k", "", 0), None)
    assert everything(store) == []


def test_delete_floor_is_above_now(store: Store, clock: Clock) -> None:
    store.put("k", "a")
    clock.now = 5000
    assert store.delete("k")[1] == Fragment("k", floor=5001)
    clock.now = 4000  # the clock went back: the new version still clears the floor
    assert store.put("k", "b")[0] == Written("k", "", 0, 5001)


def test_delete_range_deletes_existing_keys_ascending(store: Store) -> None:
    for key in ["a", "b", "c", "d"]:
        store.put(key, key)
    store.delete("c")
    done = store.delete_range("b", "d")
    assert [removed for removed, _ in done] == [Entry("b", "b", 1000), Entry("d", "d", 1000)]
    assert [fragment.floor for _, fragment in done] == [1001, 1001]
    assert [e.key for e in store.get_range("a", "z")] == ["a"]


def test_trim_keeps_only_the_newest(store: Store) -> None:
    for value in "abc":
        store.put("k", value)
    assert store.trim("k") == (Entry("k", "c", 1002), Fragment("k", floor=1002))
    assert store.get("k", 1001) == Entry("k", "", 1001)
    assert store.get("k") == Entry("k", "c", 1002)
    assert store.trim("k") == (Entry("k", "c", 1002), None)  # nothing left to trim
    assert store.trim("missing") == (Entry("missing", "", 0), None)


def test_put_after_trim_keeps_increasing(store: Store) -> None:
    store.put("k", "a")
    store.trim("k")
    assert store.put("k", "b")[0] == Written("k", "a", 1000, 1001)


def test_join_of_the_same_version_keeps_the_greater_value() -> None:
    one, two = Store(Clock()), Store(Clock())
    a, b = Fragment("k", versions=((7, "apple"),)), Fragment("k", versions=((7, "banana"),))
    one.join([a, b])
    two.join([b, a])
    assert one.get("k") == two.get("k") == Entry("k", "banana", 7)
    assert one.digest() == two.digest()


def test_join_drops_versions_below_the_floor_whatever_the_order() -> None:
    one, two = Store(Clock()), Store(Clock())
    put, floor = Fragment("k", versions=((5, "x"), (9, "y"))), Fragment("k", floor=6)
    one.join([put, floor])
    two.join([floor, put])
    assert everything(one) == everything(two) == [Fragment("k", 6, ((9, "y"),))]


def test_a_version_at_the_floor_is_kept(store: Store) -> None:
    store.join([Fragment("k", 6, ((6, "at"), (5, "below")))])
    assert store.get("k") == Entry("k", "at", 6)


def test_digest_tracks_content_not_history(clock: Clock) -> None:
    one, two = Store(clock), Store(clock)
    assert one.digest() == two.digest()
    one.put("k", "v")
    assert one.digest() != two.digest()
    two.join(everything(one))
    assert one.digest() == two.digest()
    one.put("k", "w")
    one.trim("k")
    two.join(everything(one))
    assert everything(one) == everything(two)
    assert one.digest() == two.digest()


def test_state_pages_filter_by_bucket(store: Store) -> None:
    keys = [f"key{i}" for i in range(50)]
    for key in keys:
        store.put(key, "v")
    wanted = frozenset({bucket_of("key7"), bucket_of("key30")})
    exported = [fragment.key for fragment in state_pages(store, wanted)]
    assert exported == sorted(k for k in keys if bucket_of(k) in wanted)
    assert "key7" in exported


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 1_000])
def test_keys_counted_in_steps_add_up_to_the_key_count(store: Store, rows: int) -> None:
    for i in range(60):
        for ver in range(1, i % 4 + 2):  # 1 to 4 versions a key
            store.join([Fragment(f"k{i:02}", 0, ((ver, "v"),))])
    for i in range(0, 60, 7):
        store.delete(f"k{i:02}")  # tombstones are not keys
    total, after, steps = 0, "", 0
    while True:
        counted, next_after = store.count_keys(after, rows)
        total, steps = total + counted, steps + 1
        if next_after is None:
            break
        after = next_after
    assert total == store.key_count() == 60 - 9
    assert steps >= len(list(store.keys("", "\U0010ffff", "", 1_000))) // rows


def test_no_version_beyond_the_largest_and_no_floor_beyond_the_bound(store: Store) -> None:
    store.join([Fragment("k", versions=((LAST_VERSION, "last"),))])
    with pytest.raises(VersionExhausted):
        store.put("k", "more")
    assert store.get("k") == Entry("k", "last", LAST_VERSION)
    assert store.delete("k")[1] == Fragment("k", floor=MAX_VERSION)  # removes the last version too
    assert store.get("k") == Entry("k", "", 0)


def test_a_del_with_a_clock_past_the_bound_keeps_its_floor_within_it() -> None:
    store = Store(lambda: MAX_VERSION + 1000)
    store.join([Fragment("k", versions=((5, "v"),))])
    assert store.delete("k")[1] == Fragment("k", floor=MAX_VERSION)


def test_keys_and_values_keep_every_character(store: Store) -> None:
    odd = ["a,b", "a;b", 'a"b', "a(b)", "a b", "a\nb", "ação", "键", "🙂", "\x00nul", "\t"]
    for text in odd:
        store.put(text, text * 2)
    for text in odd:
        assert store.get(text) == Entry(text, text * 2, 1000)
