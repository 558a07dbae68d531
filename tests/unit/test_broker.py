"""The private broker's directory: another user of the machine cannot plant one for us."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from kvs.mqtt.broker import EmbeddedBroker


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_broker_directory_others_may_write_to_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broker = EmbeddedBroker(1, "password")
    broker.home.mkdir()
    broker.home.chmod(mode)
    with pytest.raises(OSError, match="belongs to another user or others may write to it: remove it"):
        broker.acquire()
    assert list(broker.home.iterdir()) == []  # no lock, no config, no broker started


def test_a_symlink_in_place_of_the_broker_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broker = EmbeddedBroker(1, "password")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    broker.home.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="belongs to another user"):
        broker.acquire()


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory of another user takes root")
def test_a_broker_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broker = EmbeddedBroker(1, "password")
    broker.home.mkdir(mode=0o700)
    os.chown(broker.home, 65534, 65534)  # nobody
    with pytest.raises(OSError, match="belongs to another user"):
        broker.acquire()
