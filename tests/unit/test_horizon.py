"""--tombstone-ttl's rules one by one: the store's purge, late versions, versions set aside; the sync
core's away rule and digest comparisons (kvs/replication/horizon.py); resent batches."""

from __future__ import annotations

from pathlib import Path

from kvs.replication.actions import Apply, Publish, SetAside, Settle, Touched
from kvs.replication.codec import Batch, Body, Codec, Digest, Message, Presence, Transfer
from kvs.replication.horizon import Horizon
from kvs.replication.sending import Kept
from kvs.replication.sync import EVERYTHING, Sync
from kvs.storage.store import BUCKETS, Fragment, Store, purge_grid, tombstone_cut
from tests.clock import Clock
from tests.state import everything

TTL = 60_000
NOTHING = (0,) * BUCKETS


def test_floors_below_the_cut_are_forgotten_with_their_digest_and_size() -> None:
    clock = Clock(1000)
    store, twin = Store(clock), Store(clock)
    for s in (store, twin):
        s.put("gone", "v")
        s.put("kept", "v")
        s.put("trimmed", "a")
    clock.now = 2000
    for s in (store, twin):
        s.put("trimmed", "b")
        s.trim("trimmed")  # a floor under a version
        s.delete("gone")  # a tombstone at 2001
        s.delete("kept")
    twin.join([Fragment("late", floor=5000)])
    assert store.purge_page(2001, "", 100) == ("trimmed", 1)  # the floor of "trimmed" (2000) only
    assert store.purge_page(2002, "", 100) == ("kept", 2)
    assert [(f.key, f.floor) for f in everything(store)] == [("trimmed", 0)]
    assert store.stats().tombstones == 0
    assert store.purge_page(2002, "trimmed", 100) == (None, 0)
    fresh = Store(clock)
    fresh.join(everything(store))
    assert store.digest() == fresh.digest()
    assert store.size == fresh.size


def test_a_late_version_is_dropped_floor_or_no_floor() -> None:
    store = Store(Clock(10_000))
    store.join([Fragment("k", floor=100)])
    store.join(
        [Fragment("k", versions=((150, "old"), (900, "new"))), Fragment("j", versions=((10, "x"),))], late=500
    )
    assert [(f.key, f.floor, f.versions) for f in everything(store)] == [("k", 100, ((900, "new"),))]


def test_versions_set_aside_are_neither_read_nor_hashed_and_come_back_only_if_restored(
    tmp_path: Path,
) -> None:
    clock = Clock(1000)
    store = Store(clock, tmp_path / "s.sqlite")
    store.put("a", "old")
    store.put("b", "old")
    clock.now = 5000
    store.put("a", "new")
    store.commit()
    before = store.digest()
    assert store.set_aside(3000, "", 1) == ("a", 1)
    assert store.set_aside(3000, "a", 10) == ("b", 1)
    assert store.set_aside(3000, "b", 10) == (None, 0)
    assert store.get("b").ver == 0
    assert store.get("a", 2000).ver == 2000
    assert store.in_doubt() == 2
    assert store.digest() != before
    store.join([Fragment("a", versions=((1000, "old"),))])  # a peer holds it: back
    assert store.settle_doubt(restore=False, limit=10) == (2, 1)  # "b": no peer sent it
    assert store.settle_doubt(restore=False, limit=10) == (0, 0)
    assert store.get("a", 2000).val == "old"
    assert store.get("b").ver == 0
    store.set_aside(6000, "", 10)
    store.settle_doubt(restore=True, limit=10)  # nobody answered: all of it back
    assert store.get("a").val == "new"
    assert store.in_doubt() == 0


def test_the_last_touch_is_saved_in_the_file(tmp_path: Path) -> None:
    store = Store(Clock(1), tmp_path / "s.sqlite")
    store.touch(123_456)
    store.close()
    assert Store(Clock(1), tmp_path / "s.sqlite").touched == 123_456


def test_the_purge_cut_moves_a_grid_step_at_a_time() -> None:
    assert purge_grid(TTL) == 30_000
    assert purge_grid(3_000) == 1_500
    assert purge_grid(86_400_000) == 30_000
    assert tombstone_cut(1_000_000, TTL) == 930_000
    assert tombstone_cut(1_019_999, TTL) == 930_000
    assert tombstone_cut(1_020_000, TTL) == 960_000


def test_a_server_out_of_touch_longer_than_the_horizon_sets_its_old_versions_aside() -> None:
    horizon = Horizon(TTL)
    assert horizon.touch(1_000_000) == [Touched(1_000_000)]
    assert horizon.touch(1_000_000 + TTL) == [Touched(1_000_000 + TTL)]  # not longer
    *_, aside = horizon.touch(1_000_001 + 2 * TTL)
    assert aside == SetAside(1_000_001 + TTL + 10_000)
    assert horizon.doubt
    assert horizon.touch(2_000_000) == []  # in doubt: no touch
    assert horizon.settle() == [Settle(restore=True)]  # nobody answered
    assert Horizon(TTL, touched_ms=0).touch(5_000_000) == [Touched(5_000_000)]  # never in touch: empty
    assert Horizon(0, touched_ms=1).touch(5_000_000) == []  # off


def test_late_versions_are_cut_in_batches_and_in_transfers_sent_long_ago() -> None:
    horizon = Horizon(TTL)
    assert horizon.late(1_000_000) == 1_000_000 - TTL
    assert horizon.late(1_000_000, sent_ms=999_000, batch=False) == 0
    assert horizon.late(1_000_000, sent_ms=1_000_000 - TTL - 1, batch=False) == 1_000_000 - TTL
    assert Horizon(0).late(1_000_000) == 0


def test_digests_are_not_compared_around_a_step_of_the_purge_grid() -> None:
    horizon = Horizon(TTL)  # the cut steps every 30 s: at wall times 960,000, 990,000, 1,020,000 ms...
    assert horizon.comparable(990_000 + 10_000, 990_000 + 12_000)
    assert not horizon.comparable(990_000 + 10_000, 990_000 + 32_000)  # another step
    assert not horizon.comparable(990_000 + 1_000, 990_000 + 6_000)  # 1 s after a step: maybe purging
    assert Horizon(0).comparable(1, 10**12)


def test_the_core_cuts_late_batch_versions_and_asks_everything_when_back_in_doubt() -> None:
    epoch = 1_000_000  # our wall clock at `now` 0

    def said(body: Body, counter: int, at: float) -> Message:
        return Message("b", body, epoch=epoch, counter=counter, sent_ms=epoch + round(at * 1000))

    core = Sync("a", epoch=epoch, horizon=Horizon(TTL, touched_ms=epoch))
    core.connected_to_broker(0.0, wall_ms=epoch)
    core.subscribed(0.0)
    core.message(said(Presence(), 1, 0.0), 0.0, NOTHING, retained=True)
    core.message(Message("a", Presence(), epoch=epoch, counter=1, sent_ms=epoch), 0.1, NOTHING)  # echo
    batch = said(Batch((Fragment("k", versions=((5, "v"),)),), seq=1), 2, 1.0)
    [apply, *_] = core.message(batch, 1.0, NOTHING)
    assert isinstance(apply, Apply)
    assert apply.late == epoch + 1000 - TTL
    # Out of touch for 100 s: back in doubt, it asks everybody for everything.
    core.serving = True
    core.disconnected(2.0)
    assert SetAside(epoch + 102_000 - TTL + 10_000) in core.connected_to_broker(
        102.0, wall_ms=epoch + 102_000
    )
    core.subscribed(102.0)
    core.message(said(Presence(), 3, 102.0), 102.0, NOTHING, retained=True)
    echo = Message("a", Presence(), epoch=epoch, counter=2, sent_ms=epoch + 102_000)
    [ask] = [a for a in core.message(echo, 102.1, NOTHING) if isinstance(a, Publish)]
    assert isinstance(ask.body, Digest)
    assert ask.body.buckets == EVERYTHING
    assert ask.body.since == 0
    # The answer is complete: doubt settled once the broker has been up SETTLE s, nothing restored.
    answer = Transfer((), last=True, id=1, part=1, parts=1, answers=ask.body.request)
    assert Settle(restore=False) not in core.message(said(answer, 4, 102.2), 102.2, NOTHING)  # 0.2 s old
    assert Settle(restore=False) in core.tick(106.0, NOTHING, wall_ms=epoch + 106_000)


def test_kept_batches_are_sent_again_without_their_versions_older_than_the_horizon() -> None:
    codec = Codec("kvs", "s1", b"k" * 32, epoch=77, clock=lambda: 1234)
    kept = Kept()
    kept.add(
        1,
        codec.batch(
            [Fragment("k", versions=((10, "old"), (900, "new"))), Fragment("j", versions=((5, "x"),))], 1
        ),
    )
    kept.add(2, codec.batch([Fragment("j", floor=7)], 2))
    assert list(kept.since(1, late=500) or []) == [
        Fragment("k", versions=((900, "new"),)),
        Fragment("j", floor=7),
    ]
