"""Hypothesis strategies for the store's fragments, shared by the store's property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from kvs.storage.store import Fragment

KEYS = st.sampled_from(["a", "b", "ab", "é", "z z"])
VERSIONS = st.integers(min_value=1, max_value=40)
VALUES = st.sampled_from(["", "x", "y", "zz", "ação"])

fragments = st.builds(
    Fragment,
    key=KEYS,
    floor=st.one_of(st.just(0), VERSIONS),
    versions=st.lists(st.tuples(VERSIONS, VALUES), max_size=3).map(tuple),
)
