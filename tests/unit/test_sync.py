"""The sync core's rules one at a time: feed it messages and times, look at the actions."""

from __future__ import annotations

from kvs.replication.actions import Action, Apply, Note, PeerCounts, Publish, SendState, Serve
from kvs.replication.codec import Batch, Body, Digest, Message, Presence, Transfer
from kvs.replication.sync import REASKS, SETTLE, SKEW, Sync
from kvs.storage.store import BUCKETS, Fragment

ZERO = (0,) * BUCKETS
ONE = (1,) + (0,) * (BUCKETS - 1)


class Peer:
    """Makes the messages of one peer, with its epoch and increasing counters."""

    def __init__(self, name: str, epoch: int = 100) -> None:
        self.name, self.epoch, self.counter = name, epoch, 0

    def says(self, body: Body, counter: int | None = None, at: float = 0.0) -> Message:
        """A message sent at `at` s (the core's clock in these tests: its epoch, 0, plus `now`)."""
        self.counter += 1
        counter = self.counter if counter is None else counter
        return Message(self.name, body, self.epoch, counter, sent_ms=round(at * 1000))


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions if not isinstance(a, Note | PeerCounts)]


def joined(sync: Sync, *peers: Peer, now: float = 0.0) -> list[Action]:
    """Connects, sees the peers' retained presences, then its own presence comes back."""
    sync.connected_to_broker(now)
    sync.broker_uptime(1000, now)
    actions = sync.subscribed(now)
    for peer in peers:
        actions += sync.message(peer.says(Presence()), now, ZERO)
    return actions + sync.own_presence(now, ZERO)


def answer(sync: Sync, peer: Peer, request: int, now: float, parts: int = 1) -> list[Action]:
    actions: list[Action] = []
    for part in range(parts):
        last = part == parts - 1
        body = Transfer(
            (Fragment("k", 0, ((1, "v"),)),),
            last,
            frozenset(),
            7,
            part,
            parts if last else 0,
            request if last else 0,
        )
        actions += sync.message(peer.says(body, at=now), now, ZERO)
    return actions


def request_to(actions: list[Action], route: str) -> int:
    [request] = [
        a.body.request
        for a in actions
        if isinstance(a, Publish) and a.route == route and isinstance(a.body, Digest) and a.body.request
    ]
    return request


def test_alone_on_a_settled_broker_a_server_serves_at_once() -> None:
    sync = Sync("s1")
    assert kinds(joined(sync)) == ["Publish", "Publish", "Serve"]  # presence, request, serve


def test_a_joiner_serves_only_once_every_present_peer_has_answered_completely() -> None:
    sync, s2, s3 = Sync("s1"), Peer("s2"), Peer("s3")
    actions = joined(sync, s2, s3)
    request = request_to(actions, "digest")
    assert "Serve" not in kinds(actions)
    assert "Serve" not in kinds(answer(sync, s2, request, 0.1))
    first = Transfer((), False, frozenset(), 8, 0)
    assert kinds(sync.message(s3.says(first), 0.2, ZERO)) == ["Apply"]
    last = Transfer((), True, frozenset(), 8, 1, 2, request)
    assert kinds(sync.message(s3.says(last), 0.3, ZERO)) == ["Apply", "Serve"]


def test_a_transfer_with_a_part_missing_is_asked_again() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    request = request_to(joined(sync, s2), "digest")
    body = Transfer((), True, frozenset(), 9, 1, 2, request)  # part 0 of 2 never came
    actions = sync.message(s2.says(body), 0.1, ZERO)
    assert "Serve" not in kinds(actions)
    assert request_to(actions, "s2") > request


def test_after_a_broker_restart_a_joiner_waits_for_the_broker_to_settle() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    sync.connected_to_broker(100.0)
    sync.broker_uptime(0, 100.0)  # the broker just started: its retained presences are gone
    sync.subscribed(100.0)
    assert "Serve" not in kinds(sync.own_presence(100.0, ZERO))
    assert "Serve" not in kinds(sync.poll(100.0 + SETTLE - 0.1))
    # A peer reconnects within its backoff and says it is here: now it is waited for.
    actions = sync.message(s2.says(Presence(), at=102.0), 102.0, ZERO)
    request = request_to(actions, "s2")
    assert "Serve" not in kinds(sync.poll(100.0 + SETTLE))
    assert kinds(answer(sync, s2, request, 100.0 + SETTLE + 0.5)) == ["Apply", "Serve"]


def test_the_first_server_of_a_new_cluster_with_its_own_fresh_broker_does_not_wait() -> None:
    sync = Sync("s1", fresh=True)
    sync.connected_to_broker(0.0)
    sync.broker_uptime(0, 0.0)
    sync.subscribed(0.0)
    assert kinds(sync.own_presence(0.0, ZERO))[-1] == "Serve"


def test_a_skipped_batch_number_asks_its_sender_at_once() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    assert kinds(sync.message(s2.says(Batch((), seq=1)), 1.0, ZERO)) == ["Apply"]
    actions = sync.message(s2.says(Batch((), seq=3)), 1.1, ZERO)
    assert kinds(actions) == ["Apply", "Publish"]
    assert request_to(actions, "s2")
    # One request at a time: another gap meanwhile is remembered, not asked twice.
    assert kinds(sync.message(s2.says(Batch((), seq=5)), 1.2, ZERO)) == ["Apply"]


def test_a_digest_says_which_batch_was_last_so_a_lost_final_batch_is_noticed() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    sync.message(s2.says(Batch((), seq=1)), 1.0, ZERO)
    actions = sync.message(s2.says(Digest(ZERO, 0, batch_seq=2)), 2.0, ZERO)
    assert request_to(actions, "s2")


def test_a_request_is_answered_with_the_differing_buckets_and_one_transfer_at_a_time() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    [send] = [a for a in sync.message(s2.says(Digest(ONE, 5)), 1.0, ZERO) if isinstance(a, SendState)]
    assert send == SendState("s2", frozenset({0}), answers=5)
    assert kinds(sync.message(s2.says(Digest(ZERO, 6)), 1.1, ZERO)) == []  # while the first is in flight
    assert sync.sent("s2", 1.2, ZERO) == [SendState("s2", frozenset(), answers=6)]


def test_a_bucket_is_repaired_once_it_differs_the_same_way_twice_and_by_the_smaller_id() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    assert kinds(sync.message(s2.says(Digest(ONE)), 1.0, ZERO)) == []  # too early to tell
    actions = sync.message(s2.says(Digest(ONE)), 2.0, ZERO)
    assert [a for a in actions if isinstance(a, SendState)] == [
        SendState("s2", frozenset({0}), frozenset({0}), kind="repair")
    ]
    other = Sync("s3")
    joined(other)
    other.message(s2.says(Digest(ONE)), 1.0, ZERO)
    assert kinds(other.message(s2.says(Digest(ONE)), 2.0, ZERO)) == []  # s2 < s3: s2 repairs


def test_replayed_and_duplicated_messages_are_dropped() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    batch = s2.says(Batch((Fragment("k", 0, ((1, "v"),)),), seq=1))
    assert kinds(sync.message(batch, 1.0, ZERO)) == ["Apply"]
    replay = sync.message(batch, 1.1, ZERO)
    assert kinds(replay) == []
    assert isinstance(replay[0], Note)
    assert replay[0].drop == "replayed"
    old_epoch = Message("s2", Batch((), seq=2), epoch=50, counter=99)
    assert kinds(sync.message(old_epoch, 1.2, ZERO)) == []
    # Counters may arrive out of order within the window.
    late = [s2.says(Batch((), seq=n)) for n in (2, 3)]
    assert kinds(sync.message(late[1], 1.3, ZERO))[0] == "Apply"
    assert kinds(sync.message(late[0], 1.4, ZERO)) == ["Apply"]


def test_a_peer_that_leaves_is_waited_for_until_silent_and_its_old_runs_are_refused() -> None:
    """A "down" may be a replay (a will is signed once per run): only silence ends the wait."""
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync, s2)
    actions = sync.message(s2.says(Presence(up=False)), 1.0, ZERO)
    assert "Serve" not in kinds(actions)
    assert sync.peers["s2"].present is False
    assert "Serve" not in kinds(sync.poll(sync.interval - 0.1))
    assert kinds(sync.poll(sync.interval + 0.1))[-1] == "Serve"
    assert kinds(sync.message(Message("s2", Presence(), 50, 1), 1.1, ZERO)) == []


def test_a_silent_peer_is_forgotten() -> None:
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    joined(sync, s2)
    sync.tick(1000.0, ZERO)
    assert "s2" not in sync.peers


def sent_requests(actions: list[Action]) -> list[tuple[str, Digest]]:
    return [(a.route, a.body) for a in actions if isinstance(a, Publish) and isinstance(a.body, Digest)]


def test_after_a_reconnection_a_server_asks_each_peer_for_the_batches_it_missed_until_answered() -> None:
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    joined(sync)
    sync.message(s2.says(Presence()), 0.5, ZERO)
    sync.message(s2.says(Batch((), seq=7)), 0.6, ZERO)
    sync.disconnected(1.0)
    sync.connected_to_broker(3.0)
    sync.subscribed(3.0)
    [(route, asked)] = sent_requests(sync.own_presence(3.0, ZERO))
    assert (route, asked.since) == ("s2", 8)  # everything from the batch after the last one seen
    sync.message(s2.says(Batch((), seq=8), at=4.5), 4.5, ZERO)  # a batch: it is alive
    [again] = [d for r, d in sent_requests(sync.tick(3.0 + 2 * sync.interval + 0.1, ZERO)) if r == "s2"]
    assert again.since == 8
    assert again.request == asked.request  # the same request: the answer to either copy counts


def test_a_lost_batch_is_asked_for_by_number_and_answered_with_the_batches_kept() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    sync.message(s2.says(Batch((), seq=1)), 1.0, ZERO)
    [(_, asked)] = sent_requests(sync.message(s2.says(Batch((), seq=4)), 1.1, ZERO))
    assert asked.since == 2
    sync.message(s2.says(Batch((), seq=6)), 1.2, ZERO)  # 5 lost too, while 2-3 are asked for
    answer = Transfer((), True, frozenset(), 9, 0, 1, asked.request)
    [(_, again)] = sent_requests(sync.message(s2.says(answer), 1.3, ZERO))
    assert again.since == 5
    # The other way round: a request with `since` is answered with it, for the adapter.
    [send] = [
        a for a in sync.message(s2.says(Digest(ZERO, 11, since=40)), 1.4, ZERO) if isinstance(a, SendState)
    ]
    assert (send.answers, send.since, send.kind) == (11, 40, "lost")  # not a repair (kvs.metrics)


def test_an_unechoed_presence_is_published_again() -> None:
    sync = Sync("s1", interval=1.0)
    sync.connected_to_broker(0.0)
    sync.subscribed(0.0)
    assert Publish("presence", Presence(), retain=True) in sync.tick(3.0, ZERO)


def test_the_applied_fragments_come_out_as_they_came_in() -> None:
    sync, s2 = Sync("s1"), Peer("s2")
    joined(sync)
    fragments = (Fragment("a", 0, ((1, "x"),)), Fragment("b", 5))
    assert sync.message(s2.says(Batch(fragments, seq=1)), 1.0, ZERO)[0] == Apply("s2", fragments, batch=True)
    assert Serve() not in sync.poll(2.0)  # serving once is enough


# Found in review: each of these served early or left a lost batch unasked before its fix.


def test_a_reconnection_while_joining_waits_for_the_peers_seen_since() -> None:
    sync, a = Sync("j"), Peer("a")
    sync.connected_to_broker(0.0)
    sync.broker_uptime(0, 0.0)  # the broker just restarted
    sync.subscribed(0.0)
    sync.own_presence(0.0, ZERO)  # nobody there yet
    sync.disconnected(1.0)
    sync.connected_to_broker(1.5)
    sync.subscribed(1.5)
    sync.message(a.says(Presence()), 1.6, ZERO)  # a is back, seen before our echo
    request = request_to(sync.own_presence(1.7, ZERO), "digest")
    assert "Serve" not in kinds(sync.poll(1.5 + SETTLE))  # settled, but a has not answered
    assert kinds(answer(sync, a, request, 1.5 + SETTLE + 0.1)) == ["Apply", "Serve"]


def test_a_joining_retry_asks_for_the_whole_state_not_for_batches_since() -> None:
    sync, a = Sync("j"), Peer("a")
    sync.connected_to_broker(0.0)
    sync.broker_uptime(1000, 0.0)
    sync.subscribed(0.0)
    sync.message(a.says(Presence()), 0.0, ZERO)
    sync.message(a.says(Batch((), seq=7)), 0.0, ZERO)
    sync.message(a.says(Batch((), seq=9)), 0.0, ZERO)  # 8 lost: asked since 8
    sync.own_presence(0.1, ZERO)  # the joining request: everything
    sync.message(a.says(Batch((), seq=10), at=10.0), 10.0, ZERO)  # alive, but has not answered
    [(_, retry)] = [(r, d) for r, d in sent_requests(sync.tick(11.0, ZERO)) if r == "a"]
    assert retry.since == 0


def test_a_restarted_peer_that_loses_its_first_batch_is_asked_for_it() -> None:
    sync, a = Sync("j", epoch=100), Peer("a", epoch=50)
    joined(sync, a)
    answer(sync, a, sync.peers["a"].asked, 0.5)
    later = Peer("a", epoch=200)  # a's next run, after ours began
    sync.message(later.says(Presence()), 7.0, ZERO)
    [(_, asked)] = sent_requests(sync.message(later.says(Batch((), seq=2)), 8.0, ZERO))
    assert asked.since == 1


def test_after_a_reconnection_an_outstanding_request_is_asked_again_at_once() -> None:
    sync, a = Sync("j"), Peer("a")
    joined(sync, a)
    answer(sync, a, sync.peers["a"].asked, 0.5)
    sync.message(a.says(Batch((), seq=1)), 20.0, ZERO)
    sync.message(a.says(Batch((), seq=3)), 20.0, ZERO)  # 2 lost: asked, then the broker goes
    sync.disconnected(20.1)
    sync.connected_to_broker(21.0)
    sync.subscribed(21.0)
    [(route, asked)] = sent_requests(sync.own_presence(21.1, ZERO))
    assert (route, asked.since) == ("a", 2)


def test_state_sent_says_why_a_repair_its_reply_an_answer_or_lost_batches() -> None:
    s1, s2 = Sync("s1"), Sync("s2")
    joined(s1)
    joined(s2)
    p1, p2 = Peer("s1"), Peer("s2")
    s1.message(p2.says(Digest(ONE)), 1.0, ZERO)
    [repair] = [a for a in s1.message(p2.says(Digest(ONE)), 2.0, ZERO) if isinstance(a, SendState)]
    assert repair.kind == "repair"
    transfer = Transfer((), True, repair.send_back, 1, 0, 1)
    [reply] = [a for a in s2.message(p1.says(transfer), 2.1, ONE) if isinstance(a, SendState)]
    assert (reply.kind, reply.buckets) == ("repair_reply", frozenset({0}))
    s1.sent("s2", 2.5, ZERO)
    [answer] = [a for a in s1.message(p2.says(Digest(ONE, 7)), 3.0, ZERO) if isinstance(a, SendState)]
    assert (answer.kind, answer.since) == ("answer", 0)


def test_the_peer_counts_are_reported_when_they_change_and_only_then() -> None:
    sync, s2, s3 = Sync("s1"), Peer("s2"), Peer("s3")
    joined(sync)

    def counts(actions: list[Action]) -> list[PeerCounts]:
        return [a for a in actions if isinstance(a, PeerCounts)]

    assert counts(sync.message(s2.says(Presence()), 1.0, ZERO)) == [PeerCounts(up=1, differing=0)]
    assert counts(sync.message(s3.says(Presence()), 1.0, ZERO)) == [PeerCounts(up=2, differing=0)]
    assert counts(sync.message(s2.says(Digest(ZERO)), 1.1, ZERO)) == []  # the same: not again
    assert counts(sync.message(s2.says(Digest(ONE)), 2.0, ZERO)) == [PeerCounts(up=2, differing=1)]
    assert counts(sync.tick(2.5, ONE)) == []  # ours changed since: a count changes only on arrivals
    assert counts(sync.message(s2.says(Digest(ONE)), 3.0, ONE)) == [PeerCounts(up=2, differing=0)]
    assert counts(sync.message(s3.says(Presence(up=False)), 3.1, ONE)) == [PeerCounts(up=1, differing=0)]
    assert counts(sync.tick(1000.0, ONE)) == [PeerCounts(up=0, differing=0)]  # s2 forgotten: silent


def test_only_the_echo_of_our_own_presence_counts_not_its_retained_copy() -> None:
    sync = Sync("s1", epoch=5_000)
    sync.connected_to_broker(0.0)
    sync.broker_uptime(1000, 0.0)
    sync.subscribed(0.0)
    ours = Message("s1", Presence(), epoch=5_000, counter=1, sent_ms=5_001)
    assert sync.message(ours, 0.1, ZERO, retained=True) == []  # from an earlier connection
    assert "Serve" in kinds(sync.message(ours, 0.2, ZERO))  # the echo: nobody else is up
    assert sync.message(ours, 0.3, ZERO) == []  # once per connection


def test_a_joiner_does_not_serve_while_a_bridge_of_its_broker_is_down() -> None:
    """Site b's broker started cut off from site a: no presence of a's servers is on it. The joiner
    waits for the bridge, then SETTLE s for a's presences to cross, then for a's servers."""
    sync, s2 = Sync("s1"), Peer("s2")
    sync.connected_to_broker(0.0)
    sync.broker_uptime(1000, 0.0)
    sync.subscribed(0.0)
    sync.bridge("kvs-b-to-a", False, True, 0.0)  # retained: the bridge's state when we subscribed
    assert "Serve" not in kinds(sync.own_presence(0.0, ZERO))
    assert "Serve" not in kinds(sync.poll(10.0))
    sync.bridge("kvs-b-to-a", True, False, 10.0)  # the bridge heals
    assert "Serve" not in kinds(sync.poll(10.0 + SETTLE - 0.1))
    request = request_to(sync.message(s2.says(Presence(), at=10.5), 10.5, ZERO), "s2")  # a's crossed
    assert "Serve" not in kinds(sync.poll(10.0 + SETTLE))
    assert kinds(answer(sync, s2, request, 10.5 + SETTLE)) == ["Apply", "Serve"]


def test_a_bridge_up_before_the_joiner_subscribed_does_not_delay_it() -> None:
    sync = Sync("s1")
    sync.connected_to_broker(0.0)
    sync.broker_uptime(1000, 0.0)
    sync.subscribed(0.0)
    sync.bridge("kvs-b-to-a", True, True, 0.0)
    assert kinds(sync.own_presence(0.0, ZERO)) == ["Publish", "Serve"]


def test_a_request_asked_into_a_void_is_asked_again_when_the_peer_is_heard_again() -> None:
    """A hub restarted empty, cleansession true on the bridges: s1 reconnected to it before the
    bridges did and asked s2 (on another site) for what it missed, into a void. When s2's presence
    crosses the healed bridge, s1 asks again at once, not two sync intervals later (issue 16: 12.9
    to 14.6 s). A retained copy asks nothing; replays of the presence, at most REASKS requests."""
    sync, s2 = Sync("s1", interval=5.0), Peer("s2")
    joined(sync, s2)
    answer(sync, s2, sync.peers["s2"].asked, 0.5)
    sync.message(s2.says(Batch((), seq=1), at=10.0), 10.0, ZERO)
    sync.disconnected(11.0)  # the hub stops
    sync.connected_to_broker(12.0)
    sync.broker_uptime(0, 12.0)
    sync.subscribed(12.0)
    [(_, void)] = sent_requests(sync.own_presence(12.1, ZERO))  # no bridge yet: nobody gets it
    presence = s2.says(Presence())
    assert sent_requests(sync.message(presence, 12.5, ZERO, retained=True)) == []
    live = s2.says(Presence(), at=13.0)  # said again (every third of an interval), crossed the healed bridge
    [(route, again)] = sent_requests(sync.message(live, 13.0, ZERO))
    assert (route, again.since) == ("s2", void.since) == ("s2", 2)
    assert again.request > void.request
    assert sent_requests(sync.message(presence, 13.1, ZERO)) == []  # a replay: dropped (the window)
    # Said again and again after gaps (each presence new): at most REASKS requests in all.
    asked = [
        sent_requests(sync.message(s2.says(Presence(), at=14.0 + 3 * n), 14.0 + 3 * n, ZERO))
        for n in range(REASKS + 2)
    ]
    assert sum(len(a) for a in asked) == REASKS - 1
    answer(sync, s2, sync.peers["s2"].asked, 13.2)
    assert sent_requests(sync.message(presence, 13.3, ZERO)) == []  # answered: nothing to ask


def test_a_request_asked_into_a_void_is_asked_again_once_a_bridge_that_came_up_carries_the_peer() -> None:
    """The same hub, cut for less than half an interval, so that s2's presence comes back with no gap
    to tell (found in CI: the retry came two intervals later). The bridge says it is up a moment
    before it subscribes (measured: a request sent on that word still went nowhere); the first live
    message of s2 after it, crossing that bridge, says the way is open: asked again, once."""
    sync, s2 = Sync("s1", interval=8.0), Peer("s2")
    joined(sync, s2)
    answer(sync, s2, sync.peers["s2"].asked, 0.5)
    sync.message(s2.says(Batch((), seq=1)), 10.0, ZERO)
    sync.disconnected(10.2)
    sync.connected_to_broker(10.8)
    sync.broker_uptime(0, 10.8)
    sync.subscribed(10.8)
    [(_, void)] = sent_requests(sync.own_presence(10.9, ZERO))
    assert sent_requests(sync.bridge("kvs-a-to-hub", True, False, 11.4)) == []  # not subscribed yet
    [(route, again)] = sent_requests(sync.message(s2.says(Batch((), seq=2)), 11.5, ZERO))
    assert (route, again.since) == ("s2", void.since) == ("s2", 2)
    assert again.request > void.request
    assert sent_requests(sync.message(s2.says(Batch((), seq=3)), 11.6, ZERO)) == []  # asked since
    sync.bridge("kvs-b-to-hub", True, True, 11.7)  # retained: no news
    assert sent_requests(sync.message(s2.says(Batch((), seq=4)), 11.8, ZERO)) == []
    answer(sync, s2, sync.peers["s2"].asked, 12.0)
    sync.bridge("kvs-b-to-hub", True, False, 13.0)
    assert sent_requests(sync.message(s2.says(Batch((), seq=5)), 13.1, ZERO)) == []  # nothing unanswered


# Replays at any time (docs/security.md, "Replays and clocks"): judged by the sender's clock, with no
# memory of earlier runs. The core's clock in these tests is its epoch plus `now` (ms).


def test_a_replayed_presence_of_an_earlier_run_does_not_let_the_real_run_answer_count_for_nothing() -> None:
    """Found black-box: a retained presence of s2's earlier run, replayed, then s2's real answer made a
    new record that had been asked nothing, and the joiner served after its first part."""
    sync, old, s2 = Sync("j", epoch=0), Peer("s2", epoch=100), Peer("s2", epoch=200)
    sync.connected_to_broker(50.0)
    sync.broker_uptime(1000, 50.0)
    sync.subscribed(50.0)
    sync.message(old.says(Presence(), at=1.0), 50.0, ZERO, retained=True)  # recorded long ago
    request = request_to(sync.own_presence(50.0, ZERO), "digest")
    first = Transfer((Fragment("a", 0, ((1, "x"),)),), False, frozenset(), 3, 0)
    assert kinds(sync.message(s2.says(first, at=50.1), 50.1, ZERO)) == ["Apply"]
    assert "Serve" not in kinds(sync.poll(50.2))
    last = Transfer((), True, frozenset(), 3, 1, 2, request)
    assert kinds(sync.message(s2.says(last, at=50.3), 50.3, ZERO)) == ["Apply", "Serve"]


def test_a_message_too_old_sent_before_we_subscribed_or_from_a_clock_far_ahead_is_dropped() -> None:
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    joined(sync, now=100.0)
    batch = Batch((Fragment("k", 0, ((1, "v"),)),), seq=1)

    def taken(message: Message, now: float) -> bool:
        return "Apply" in kinds(sync.message(message, now, ZERO))

    assert not taken(s2.says(batch, at=99.5), 150.0)  # sent 50 s ago: a record of s2 may be gone
    assert not taken(s2.says(batch, at=100.0 - SKEW - 0.1), 100.5)  # before we subscribed (at 100)
    assert not taken(s2.says(batch, at=100.5 + SKEW + 0.1), 100.5)  # ahead of our clock, past SKEW
    assert taken(s2.says(batch, at=100.5 + SKEW - 0.1), 100.5)  # within SKEW
    assert taken(s2.says(batch, at=100.0 - SKEW + 0.1), 100.5)
    assert taken(s2.says(batch, at=100.0), 100.0 + sync.max_age - 0.1)  # late, not too late


def test_join_requests_replayed_after_the_receiver_restarted_are_not_answered() -> None:
    """Found black-box: a new run remembers no counters, so each replayed request sent it a transfer."""
    joiner = Peer("j")
    request = joiner.says(Digest(ZERO, request=1), at=10.0)
    before = Sync("s1", epoch=0)
    joined(before, joiner, now=5.0)
    assert "SendState" in kinds(before.message(request, 10.0, ZERO))
    assert "SendState" not in kinds(before.message(request, 10.1, ZERO))  # the same run remembers
    after = Sync("s1", epoch=20_000)  # restarted at 20 s: what was sent before it subscribed is old
    joined(after, now=0.0)
    assert kinds(after.message(request, 0.5, ZERO)) == []
    assert after.peers == {}


def test_a_departed_peer_s_presence_replayed_holds_a_joiner_back_one_sync_interval_at_most() -> None:
    """Found black-box: it held every new server back 36 s (183 s with the default interval)."""
    sync, gone, s3 = Sync("j", interval=1.0), Peer("s2"), Peer("s3")
    sync.connected_to_broker(100.0)
    sync.broker_uptime(1000, 100.0)
    sync.subscribed(100.0)
    sync.message(gone.says(Presence(), at=30.0), 100.0, ZERO, retained=True)
    sync.message(s3.says(Presence(), at=99.9), 100.0, ZERO, retained=True)
    request = request_to(sync.own_presence(100.0, ZERO), "digest")
    assert "Serve" not in kinds(answer(sync, s3, request, 100.2))  # s2 is waited for
    assert "Serve" not in kinds(sync.poll(100.0 + sync.interval - 0.05))
    assert kinds(sync.poll(100.0 + sync.interval + 0.05))[-1] == "Serve"


def test_replays_of_a_live_peer_s_recent_messages_do_not_stretch_its_silence() -> None:
    """Its messages that we never got, replayed one by one, show it alive only as of when they were sent."""
    sync, gone = Sync("j", interval=1.0), Peer("s2")
    sync.connected_to_broker(100.0)
    sync.broker_uptime(1000, 100.0)
    sync.subscribed(100.0)
    sync.message(gone.says(Presence(), at=99.9), 100.0, ZERO, retained=True)
    sync.own_presence(100.0, ZERO)
    recorded = [gone.says(Batch((), seq=n), at=99.95) for n in range(1, 30)]
    served = []
    for n, message in enumerate(recorded):
        now = 100.0 + 0.3 * n
        sync.message(message, now, ZERO)  # sent within SKEW before we subscribed, never seen by us
        if "Serve" in kinds(sync.poll(now)):
            served.append(now)
    assert served
    assert served[0] <= 99.95 + SKEW + sync.interval + 0.3


def test_a_replayed_down_of_a_live_peer_does_not_release_a_joiner() -> None:
    sync, s2 = Sync("j", interval=1.0), Peer("s2")
    joined(sync, s2, now=0.0)
    will = Message("s2", Presence(up=False), s2.epoch, 1, sent_ms=0)  # signed at connect, replayable
    assert "Serve" not in kinds(sync.message(will, 0.5, ZERO))
    sync.message(s2.says(Presence(), at=0.8), 0.8, ZERO)  # its presence, said again
    assert sync.peers["s2"].present
    assert "Serve" not in kinds(sync.poll(1.5))  # alive, not answered yet: still waited for


def test_an_earlier_presence_of_our_own_is_no_echo_and_is_said_over() -> None:
    sync = Sync("s1", epoch=5_000)
    sync.connected_to_broker(10.0)
    sync.broker_uptime(1000, 10.0)
    sync.subscribed(10.0)  # our clock: 15,000 ms
    earlier_run = Message("s1", Presence(), epoch=4_000, counter=9, sent_ms=4_500)
    this_run_before = Message("s1", Presence(), epoch=5_000, counter=1, sent_ms=5_100)
    down = Message("s1", Presence(up=False), epoch=5_000, counter=2, sent_ms=5_200)
    said = Publish("presence", Presence(), retain=True)
    for n, replay in enumerate((earlier_run, this_run_before, down)):
        assert sync.message(replay, 11.0 + 1.1 * n, ZERO) == [said], replay
    assert not sync.serving
    echo = Message("s1", Presence(), epoch=5_000, counter=3, sent_ms=15_000)
    assert "Serve" in kinds(sync.message(echo, 15.0, ZERO))


def test_a_restart_with_the_clock_set_back_is_taken_once_the_earlier_run_falls_silent() -> None:
    sync, before, after = Sync("s1", interval=1.0), Peer("s2", epoch=9_000), Peer("s2", epoch=8_000)
    joined(sync, now=10.0)
    sync.message(before.says(Presence(), at=10.0), 10.0, ZERO)
    assert kinds(sync.message(after.says(Batch((), seq=1), at=10.5), 10.5, ZERO)) == []  # replay?
    assert kinds(sync.message(after.says(Batch((), seq=2), at=11.5), 11.5, ZERO)) == ["Apply"]
    assert sync.peers["s2"].epoch == 8_000
    assert kinds(sync.message(before.says(Batch((), seq=9), at=11.6), 11.6, ZERO)) == []  # ended


def test_a_forgotten_peer_s_messages_are_too_old_to_be_taken_again() -> None:
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    joined(sync, s2, now=0.0)
    batch = s2.says(Batch((Fragment("k", 0, ((1, "v"),)),), seq=1), at=0.1)
    assert kinds(sync.message(batch, 0.1, ZERO)) == ["Apply"]
    sync.tick(100.0, ZERO)
    assert "s2" not in sync.peers
    assert kinds(sync.message(batch, 100.1, ZERO)) == []


def test_a_live_server_says_its_presence_every_third_of_an_interval() -> None:
    sync = Sync("s1", interval=3.0)
    joined(sync)
    presence = Publish("presence", Presence(), retain=True)
    assert presence not in sync.poll(0.9)
    assert presence in sync.poll(1.0)
    assert presence not in sync.poll(1.5)
    assert presence in sync.poll(2.0)


# A server that reads behind (starved of CPU, or holding back what it cannot join yet): what it reads
# was sent long ago. Ages and silences are judged as of where its reading has got to, which the echo
# of its own presence says; and the time a request waits counts from the last part of an answer.


def echo(sync: Sync, said: float, now: float) -> list[Action]:
    """The echo of our presence said at `said` s, read at `now` (the core's clock: its epoch plus s)."""
    counter = 10_000 + round(said * 1000)
    return sync.message(
        Message(sync.node_id, Presence(), sync.epoch, counter, sent_ms=round(said * 1000)), now, ZERO
    )


def test_a_server_reading_far_behind_takes_what_was_sent_with_what_it_reads_and_no_older() -> None:
    """Found in the 40 s outage test with the servers in one session: a joiner reading 12 s behind
    dropped its peers' batches and transfers as replays, asked for them again and never served."""
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    joined(sync, s2, now=0.0)
    echo(sync, 20.0, 40.0)  # 20 s behind: what we read now was sent about 20 s ago
    batch = Batch((Fragment("k", 0, ((1, "v"),)),), seq=1)
    assert kinds(sync.message(s2.says(batch, at=19.9), 40.1, ZERO)) == ["Apply"]
    assert kinds(sync.message(s2.says(batch, at=10.0), 40.2, ZERO)) == ["Apply"]  # 10.5 s before
    assert kinds(sync.message(s2.says(batch, at=7.0), 40.3, ZERO)) == []  # 13.5 s before: a replay
    echo(sync, 40.5, 40.6)  # caught up: the wall clock again
    assert kinds(sync.message(s2.says(batch, at=27.0), 40.7, ZERO)) == []
    assert kinds(sync.message(s2.says(batch, at=29.0), 40.8, ZERO)) == ["Apply"]


def test_a_peer_is_silent_only_if_it_said_nothing_in_an_interval_of_what_we_read() -> None:
    sync, s2 = Sync("j", interval=1.0), Peer("s2")
    request = request_to(joined(sync, s2, now=0.0), "digest")
    echo(sync, 0.1, 5.0)  # 5 s behind: s2's answer may be waiting behind this
    assert "Serve" not in kinds(sync.poll(5.0))
    assert sync.peers["s2"].asked == request
    echo(sync, 3.0, 5.3)  # we read on: nothing of s2 came in three seconds of its messages
    assert "Serve" in kinds(sync.poll(5.4))


def test_a_request_answered_part_by_part_is_not_asked_again_until_the_parts_stop() -> None:
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    request = request_to(joined(sync, s2, now=0.0), "digest")
    for n in range(1, 6):  # a long transfer: a part a second, 5 s for a request asked again after 2
        part = Transfer((Fragment(f"k{n}", 0, ((1, "v"),)),), False, frozenset(), 4, n - 1)
        sync.message(s2.says(part, at=float(n)), float(n), ZERO)
        assert sent_requests(sync.tick(n + 0.5, ZERO)) == [], n
    for at in (5.3, 5.6, 5.9, 6.2, 6.5, 6.8):  # alive (its presence every third of an interval), no parts
        sync.message(s2.says(Presence(), at=at), at, ZERO)
    [(route, again)] = sent_requests(sync.tick(7.1, ZERO))  # asked again: the same request
    assert (route, again.request) == ("s2", request)
    last = Transfer((), True, frozenset(), 4, 5, 6, request)
    assert kinds(sync.message(s2.says(last, at=7.2), 7.2, ZERO)) == ["Apply", "Serve"]


def test_a_peer_read_in_bursts_is_not_taken_for_reconnected() -> None:
    """Our reading paused (its presences queued behind a big batch): its presences came a third of an
    interval apart by its clock, so the way to it never closed, and nothing is asked again."""
    sync, s2 = Sync("s1", interval=1.0), Peer("s2")
    request = request_to(joined(sync, s2, now=0.0), "digest")
    sync.message(s2.says(Presence(), at=0.3), 0.3, ZERO)
    assert sent_requests(sync.message(s2.says(Presence(), at=0.6), 2.5, ZERO)) == []
    assert sent_requests(sync.message(s2.says(Presence(), at=3.0), 3.0, ZERO)) != []  # its own gap
    assert sync.peers["s2"].asked != request
