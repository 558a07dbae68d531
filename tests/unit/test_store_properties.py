"""Hypothesis properties of the store: the join is a semilattice merge, and the
store behaves like a plain model of the semantics in docs/contract.md."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvs.storage.store import Entry, Fragment, Store
from tests.state import everything, fresh, state_of
from tests.strategies import KEYS, VALUES, VERSIONS, fragments


@given(st.lists(fragments), st.lists(fragments))
def test_join_is_commutative(a: list[Fragment], b: list[Fragment]) -> None:
    assert state_of(a, b) == state_of(b, a)


@given(st.lists(fragments), st.lists(fragments), st.lists(fragments))
def test_join_is_associative(a: list[Fragment], b: list[Fragment], c: list[Fragment]) -> None:
    # (a join b) join c, where the left side is first merged into one state.
    left = fresh()
    left.join(a)
    left.join(b)
    right = fresh()
    right.join(b)
    right.join(c)
    one, two = fresh(), fresh()
    one.join(everything(left))
    one.join(c)
    two.join(a)
    two.join(everything(right))
    assert (everything(one), one.digest()) == (everything(two), two.digest())


@given(st.lists(fragments))
def test_join_is_idempotent(a: list[Fragment]) -> None:
    assert state_of(a) == state_of(a, a) == state_of(a, list(reversed(a)))


@given(st.lists(fragments, min_size=1), st.data())
def test_replicas_fed_the_same_fragments_in_any_order_end_equal(
    a: list[Fragment], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(a))
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(a), max_size=len(a)))
    one, two = fresh(), fresh()
    for fragment in a:
        one.join([fragment])
    for fragment in duplicated:
        two.join([fragment])
    assert everything(one) == everything(two)
    assert one.digest() == two.digest()


@given(st.lists(fragments), KEYS, VERSIONS)
def test_a_read_at_v_never_returns_a_version_above_v(a: list[Fragment], key: str, at: int) -> None:
    store = fresh()
    store.join(a)
    assert store.get(key, at).ver <= at
    assert all(entry.ver <= at for entry in store.get_range("a", "z z", at))


@given(st.lists(fragments))
def test_export_then_join_reproduces_the_state_and_digest(a: list[Fragment]) -> None:
    store = fresh()
    store.join(a)
    copy = fresh()
    copy.join(everything(store))
    assert everything(copy) == everything(store)
    assert copy.digest() == store.digest()


class StoreAgainstModel(RuleBasedStateMachine):
    """Random puts, deletes, trims and reads, checked against a few dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 100
        self.store = Store(lambda: self.now)
        self.versions: dict[str, dict[int, str]] = {}
        self.floors: dict[str, int] = {}

    def newest(self, key: str) -> Entry | None:
        history = self.versions.get(key)
        if not history:
            return None
        ver = max(history)
        return Entry(key, history[ver], ver)

    @rule(step=st.integers(min_value=-3, max_value=3))
    def tick(self, step: int) -> None:
        self.now = max(1, self.now + step)

    @rule(key=KEYS, val=VALUES)
    def put(self, key: str, val: str) -> None:
        newest = self.newest(key)
        expected = max(self.now, newest.ver + 1 if newest else 0, self.floors.get(key, 0))
        written, _ = self.store.put(key, val)
        assert written.ver == expected
        assert (written.old_val, written.old_ver) == ((newest.val, newest.ver) if newest else ("", 0))
        self.versions.setdefault(key, {})[expected] = val

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        newest = self.newest(key)
        removed, _ = self.store.delete(key)
        assert removed == (newest or Entry(key, "", 0))
        if newest:
            self.floors[key] = max(self.now, newest.ver) + 1
            self.versions[key] = {}

    @rule(key=KEYS)
    def trim(self, key: str) -> None:
        newest = self.newest(key)
        kept, _ = self.store.trim(key)
        assert kept == (newest or Entry(key, "", 0))
        if newest:
            self.floors[key] = newest.ver
            self.versions[key] = {newest.ver: newest.val}

    @precondition(lambda self: any(self.versions.values()))
    @rule(key=KEYS, at=st.integers(min_value=-1, max_value=150))
    def get(self, key: str, at: int) -> None:
        history = self.versions.get(key, {})
        below = [v for v in history if at <= 0 or v <= at]
        if below:
            expected = Entry(key, history[max(below)], max(below))
        else:
            expected = Entry(key, "", at if history and at > 0 else 0)
        assert self.store.get(key, at) == expected

    @rule(fr=KEYS, to=KEYS)
    def get_range(self, fr: str, to: str) -> None:
        expected = [self.newest(k) for k in sorted(self.versions) if fr <= k <= to and self.versions[k]]
        assert self.store.get_range(fr, to) == expected

    @invariant()
    def key_count_matches(self) -> None:
        assert self.store.key_count() == sum(1 for history in self.versions.values() if history)


TestStoreAgainstModel = StoreAgainstModel.TestCase
TestStoreAgainstModel.settings = settings(max_examples=60, stateful_step_count=40)
