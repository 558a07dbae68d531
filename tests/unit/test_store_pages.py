"""The store's bounded primitives: pages read in a loop equal the whole, steps keep the digest."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.storage.store import Entry, Fragment, Store, Version, resume_at
from tests.state import everything, state_of
from tests.strategies import VERSIONS, fragments

LIMITS = st.integers(min_value=1, max_value=4)


def joined(batch: list[Fragment]) -> Store:
    store = Store(lambda: 1)
    store.join(batch)
    return store


@settings(deadline=None)  # the machine is shared: no per-example deadline
@given(st.lists(fragments), LIMITS, st.one_of(st.none(), VERSIONS))
def test_range_pages_make_the_whole_range(batch: list[Fragment], limit: int, at: int | None) -> None:
    store = joined(batch)
    pages: list[Entry] = []
    after = ""
    while page := store.range_page("a", "é", at, after, limit):
        assert len(page) <= limit
        pages += page
        after = page[-1].key
    assert pages == store.get_range("a", "é", at)


@settings(deadline=None)  # the machine is shared: no per-example deadline
@given(st.lists(fragments), LIMITS)
def test_key_pages_and_export_pages_make_the_whole(batch: list[Fragment], limit: int) -> None:
    store = joined(batch)
    keys: list[str] = []
    while page := store.keys("a", "z z", keys[-1] if keys else "", limit):
        keys += page
    assert keys == [entry.key for entry in store.get_range("a", "z z")]
    exported: list[Fragment] = []
    while fragment_page := store.export_page(exported[-1].key if exported else "", limit):
        exported += fragment_page
    assert exported == everything(store)


@settings(deadline=None)  # the machine is shared: no per-example deadline
@given(st.lists(fragments), st.integers(min_value=1, max_value=40))
def test_export_pieces_make_the_whole_and_stay_within_their_characters(
    batch: list[Fragment], chars: int
) -> None:
    store = joined(batch)
    pieces: list[Fragment] = []
    after: tuple[str, Version] = ("", -1)
    while page := store.export_after(*after, chars):
        rows = [(f.key, None) for f in page if f.floor] + [(f.key, v) for f in page for _, v in f.versions]
        # At least one row; past `chars` by the last row only.
        last = max(len(key) + 12 + len(val or "") for key, val in rows)
        assert sum(len(key) + 12 + len(val or "") for key, val in rows) < chars + last
        pieces += page
        after = resume_at(page[-1])
    rejoined = Store(lambda: 1)
    rejoined.join(pieces)  # a key's history may come in pieces: the join puts them together
    assert everything(rejoined) == everything(store)
    assert [f.key for f in pieces] == sorted(f.key for f in pieces)


@settings(deadline=None)  # the machine is shared: no per-example deadline
@given(st.lists(fragments), LIMITS, st.sampled_from(["a", "b", "é"]), VERSIONS)
def test_dropping_in_steps_then_raising_the_floor_equals_raising_it(
    batch: list[Fragment], limit: int, key: str, floor: int
) -> None:
    store = joined(batch)
    while store.drop_below(key, floor, limit) == limit:
        pass
    assert all(
        ver >= floor for fragment in everything(store) if fragment.key == key for ver, _ in fragment.versions
    )
    store.join([Fragment(key, floor)])
    assert (everything(store), store.digest()) == state_of(batch, [Fragment(key, floor)])


def test_delete_keys_skips_what_does_not_exist() -> None:
    store = joined([Fragment("a", 0, ((5, "x"),)), Fragment("b", 9)])
    assert store.delete_keys(["a", "b", "c"]) == [(Entry("a", "x", 5), Fragment("a", floor=6))]
    assert store.key_count() == 0
