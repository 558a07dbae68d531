"""A store's whole state, read through its public pages (as the Admin Dump and a transfer read it)."""

from __future__ import annotations

from kvs.storage.store import Fragment, Store

PAGE = 1000


def everything(store: Store) -> list[Fragment]:
    """Every key's floor and versions (tombstones included), one fragment per key, by key."""
    state: list[Fragment] = []
    while page := store.export_page(state[-1].key if state else "", PAGE):
        state += page
    return state
