"""Secret files (docs/contract.md, "Security"): the cluster key and the private broker's password."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kvs import keys
from kvs.errors import KeyFileError
from kvs.keys import KEY_BYTES, load_cluster_key, read_password
from kvs.mqtt.broker import USER, private_auth, private_password_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An XDG_CONFIG_HOME of the test's own; returns the kvs directory in it (not yet created)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "kvs"


def write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def refusal(path: Path | None, cluster: str = "kvs") -> str:
    with pytest.raises(KeyFileError) as caught:
        load_cluster_key(path, cluster)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_without_a_path_the_key_is_created_0600_in_a_0700_directory_under_xdg(config: Path) -> None:
    key = load_cluster_key(None, "shop")
    path = config / "shop.key"
    assert path.read_bytes() == key
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    assert sorted(p.name for p in config.iterdir()) == ["shop.key"]  # no temporary file left behind


def test_the_default_key_is_kept_and_each_cluster_has_its_own(config: Path) -> None:
    first = load_cluster_key(None, "shop")
    assert load_cluster_key(None, "shop") == first
    assert load_cluster_key(None, "other") != first


def test_without_xdg_config_home_the_key_goes_to_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for value in (None, "", "relative/dir"):  # XDG: unset, empty and relative values are ignored
        if value is None:
            monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CONFIG_HOME", value)
        assert keys.default_key_path("kvs") == tmp_path / ".config" / "kvs" / "kvs.key"
    key = load_cluster_key(None, "kvs")
    assert (tmp_path / ".config" / "kvs" / "kvs.key").read_bytes() == key


def test_an_explicit_key_file_is_read_as_it_is(tmp_path: Path) -> None:
    key = bytes(range(KEY_BYTES))
    assert load_cluster_key(write(tmp_path / "k", key), "kvs") == key
    assert load_cluster_key(write(tmp_path / "ro", key, 0o400), "kvs") == key


def test_a_missing_explicit_key_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    assert refusal(path) == f"cluster key file {path} does not exist"
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_a_key_file_open_to_the_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "k", os.urandom(KEY_BYTES), mode)
    assert refusal(path) == (
        f"cluster key file {path} is open to other users (mode {mode:04o}): run chmod 600 {path}"
    )


def test_a_default_key_file_open_to_others_is_refused_too(config: Path) -> None:
    load_cluster_key(None, "kvs")
    (config / "kvs.key").chmod(0o644)
    assert "is open to other users (mode 0644)" in refusal(None)


@pytest.mark.parametrize("size", [0, 1, KEY_BYTES - 1, KEY_BYTES + 1, 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = write(tmp_path / "k", b"k" * size)
    assert refusal(path).startswith(f"cluster key file {path} holds {size} bytes, not 32")


def test_a_directory_or_a_fifo_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert refusal(directory) == f"cluster key file {directory} is not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert refusal(fifo) == f"cluster key file {fifo} is not a regular file"  # and did not hang


def test_a_creation_race_keeps_the_first_key(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server creates the file between our check and our link: its key stays, ours goes."""
    config.mkdir(parents=True, mode=0o700)
    theirs = write(config / "kvs.key", b"t" * KEY_BYTES)
    monkeypatch.setattr(os.path, "lexists", lambda _path: False)
    assert load_cluster_key(None, "kvs") == b"t" * KEY_BYTES
    assert [p.name for p in config.iterdir()] == [theirs.name]


def test_many_threads_creating_the_key_at_once_get_one_key(config: Path) -> None:
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_cluster_key(None, "kvs"))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    assert set(results) == {(config / "kvs.key").read_bytes()}


def test_processes_starting_together_end_with_the_same_key(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    code = "from kvs.keys import load_cluster_key; print(load_cluster_key(None, 'kvs').hex(), end='')"
    children = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(6)
    ]
    outputs = {child.communicate(timeout=60)[0] for child in children}
    assert outputs == {(tmp_path / "kvs" / "kvs.key").read_bytes().hex()}


def test_a_password_file_loses_its_final_newline_and_must_not_be_empty(tmp_path: Path) -> None:
    assert read_password(write(tmp_path / "p", b"s3cret\n"), "password file") == "s3cret"
    assert read_password(write(tmp_path / "q", b"s3cret"), "password file") == "s3cret"
    for content in (b"", b"\n", b"two\nlines\n"):
        with pytest.raises(KeyFileError, match="must hold one non-empty line"):
            read_password(write(tmp_path / "e", content), "password file")
    with pytest.raises(KeyFileError, match="open to other users"):
        read_password(write(tmp_path / "o", b"s3cret\n", 0o644), "password file")


def test_the_private_broker_password_is_made_once_0600_next_to_the_cluster_key(config: Path) -> None:
    auth = private_auth(40123)
    path = private_password_path(40123)
    assert path == config / "broker-40123.password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.user == USER
    assert auth.password == path.read_text()
    assert len(auth.password) >= 32
    assert private_auth(40123) == auth
    assert private_auth(40124).password != auth.password
    assert auth.password not in repr(auth)  # never in a log line
