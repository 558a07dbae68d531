"""A store's whole state, read through its public pages (as the Admin Dump and a transfer read it);
the state a new store reaches by joining fragments."""

from __future__ import annotations

from kvs.storage.store import Fragment, Store

PAGE = 1000


def everything(store: Store) -> list[Fragment]:
    """Every key's floor and versions (tombstones included), one fragment per key, by key."""
    state: list[Fragment] = []
    while page := store.export_page(state[-1].key if state else "", PAGE):
        state += page
    return state


def fresh() -> Store:
    """An empty store in memory whose clock stands at 1 ms."""
    return Store(lambda: 1)


def state_of(*groups: list[Fragment]) -> tuple[list[Fragment], tuple[int, ...]]:
    """The state (and digest) of a new store that joined the groups in order."""
    store = fresh()
    for group in groups:
        store.join(group)
    return everything(store), store.digest()
