"""The replication metrics' methods, and the store's counts behind the store gauges."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvs.metrics import DROP_REASONS, NO_METRICS, Metrics, ReplicationMetrics
from kvs.storage.store import Fragment, Stats, Store
from tests.clock import Clock


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, parsed as Prometheus would."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[name, tuple(sorted(labels.items()))]


def test_replication_methods_move_their_metrics_by_what_they_are_told() -> None:
    metrics = Metrics()
    reports: ReplicationMetrics = metrics  # the typed interface the replication adapter calls
    reports.batch_sent(100)
    reports.batch_sent(50)
    reports.batch_skipped()
    reports.batch_applied(7)
    reports.dropped("malformed")
    reports.dropped("malformed")
    reports.dropped("replayed")
    reports.repair_started(3)
    reports.repair_started(2)
    reports.lost_batches_answered(resent=True)
    reports.lost_batches_answered(resent=False)
    reports.lost_batches_answered(resent=False)
    reports.peers(up=2, differing=0)
    reports.peers(up=1, differing=1)
    reports.caught_up(1.25)
    reports.lag(0.0015)
    reports.lag(0.2)
    reports.lag(-0.5)  # a peer's clock ahead of ours: counted as no lag

    assert value(metrics, "kvs_replication_batches_sent_total") == 2
    assert value(metrics, "kvs_replication_bytes_sent_total") == 150
    assert value(metrics, "kvs_replication_batches_skipped_total") == 1
    assert value(metrics, "kvs_replication_batches_applied_total") == 1
    assert value(metrics, "kvs_replication_bytes_applied_total") == 7
    assert value(metrics, "kvs_replication_messages_dropped_total", reason="malformed") == 2
    assert value(metrics, "kvs_replication_messages_dropped_total", reason="replayed") == 1
    assert value(metrics, "kvs_replication_repairs_started_total") == 2
    assert value(metrics, "kvs_replication_buckets_repaired_total") == 5
    assert value(metrics, "kvs_replication_lost_batches_answered_total", sent="batches") == 1
    assert value(metrics, "kvs_replication_lost_batches_answered_total", sent="state") == 2
    assert value(metrics, "kvs_replication_peers_up") == 1
    assert value(metrics, "kvs_replication_peers_differing") == 1
    assert value(metrics, "kvs_replication_catch_up_seconds") == 1.25
    assert value(metrics, "kvs_replication_lag_seconds_count") == 3
    assert value(metrics, "kvs_replication_lag_seconds_sum") == pytest.approx(0.2015)
    assert value(metrics, "kvs_replication_lag_seconds_bucket", le="0.002") == 2  # 1.5 ms and the clamped one
    assert value(metrics, "kvs_replication_lag_seconds_bucket", le="0.1") == 2
    assert value(metrics, "kvs_replication_lag_seconds_bucket", le="0.5") == 3


def test_every_drop_reason_is_scraped_from_the_start_at_zero() -> None:
    metrics = Metrics()
    for reason in DROP_REASONS:
        assert value(metrics, "kvs_replication_messages_dropped_total", reason=reason) == 0


def test_two_servers_in_one_process_count_apart() -> None:
    first, second = Metrics(), Metrics()  # the default global registry would refuse the second
    first.batch_sent(10)
    assert value(first, "kvs_replication_batches_sent_total") == 1
    assert value(second, "kvs_replication_batches_sent_total") == 0


def test_the_null_metrics_take_every_call_and_metrics_overrides_each() -> None:
    NO_METRICS.batch_sent(1)
    NO_METRICS.batch_skipped()
    NO_METRICS.batch_applied(1)
    NO_METRICS.dropped("foreign")
    NO_METRICS.repair_started(1)
    NO_METRICS.lost_batches_answered(resent=True)
    NO_METRICS.peers(1, 0)
    NO_METRICS.caught_up(1.0)
    NO_METRICS.lag(1.0)
    NO_METRICS.broker("localhost:1883", connected=True)
    reports = [name for name in vars(ReplicationMetrics) if not name.startswith("_")]
    assert len(reports) == 10
    assert [name for name in reports if name not in vars(Metrics)] == []  # none counted by nobody


def test_store_stats_count_keys_versions_and_tombstones() -> None:
    store = Store(Clock())
    assert store.stats() == Stats(keys=0, versions=0, tombstones=0)
    store.put("a", "1")
    store.put("a", "2")
    store.put("b", "1")
    store.put("c", "1")
    assert store.stats() == Stats(keys=3, versions=4, tombstones=0, bytes=4 * (1 + 1 + 8))
    store.trim("a")  # a floor under a key that still exists is not a tombstone
    store.delete("b")
    assert store.stats() == Stats(keys=2, versions=2, tombstones=1, bytes=2 * (1 + 1 + 8) + 2 * (1 + 8))
    store.join([Fragment("d", floor=5)])  # a tombstone from a peer
    store.join([Fragment("b", versions=((1, "old"),))])  # below b's floor: stays deleted
    assert store.stats() == Stats(keys=2, versions=2, tombstones=2, bytes=2 * (1 + 1 + 8) + 3 * (1 + 8))
