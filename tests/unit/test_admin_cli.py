"""scripts/admin.sh's compare and dump, on Dump replies made by hand (no server)."""

from __future__ import annotations

import json

import pytest

from kvs._gen import replication_pb2 as pb
from kvs.admin.cli import as_json, compare, differing_keys


def fragment(key: str, floor: int = 0, **versions: str) -> pb.Fragment:
    pairs = sorted((int(ver[1:]), val) for ver, val in versions.items())
    return pb.Fragment(key=key, floor=floor, versions=[v for v, _ in pairs], values=[x for _, x in pairs])


MINE = [fragment("a", v10="x"), fragment("b", 5, v20="y", v30="z"), fragment("gone", 40)]


def test_identical_dumps_compare_equal(capsys: pytest.CaptureFixture[str]) -> None:
    theirs = [pb.Fragment.FromString(f.SerializeToString()) for f in MINE]
    assert compare([MINE, theirs, theirs], ["s1", "s2", "s3"]) == 0
    assert capsys.readouterr().out == "identical: 3 keys (tombstones included) on s1, s2, s3\n"


def test_a_value_a_version_a_floor_or_a_key_that_differs_is_named() -> None:
    assert differing_keys(MINE, [fragment("a", v10="X"), *MINE[1:]]) == ["a"]
    assert differing_keys(MINE, [MINE[0], fragment("b", 5, v20="y"), MINE[2]]) == ["b"]
    assert differing_keys(MINE, [*MINE[:2], fragment("gone", 41)]) == ["gone"]
    assert differing_keys(MINE, [*MINE, fragment("new", v1="n")]) == ["new"]
    assert differing_keys(MINE, MINE[1:]) == ["a"]


def test_compare_says_which_server_differs_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare([MINE, MINE, MINE[:2]], ["s1", "s2", "s3"]) == 1
    assert capsys.readouterr().out == "s3 differs from s1 on 1 key(s), e.g. ['gone']\n"


def test_dump_prints_a_key_its_floor_and_its_version_value_pairs() -> None:
    assert json.loads(as_json(MINE[1])) == {"key": "b", "floor": 5, "versions": [[20, "y"], [30, "z"]]}
    assert json.loads(as_json(fragment("é", v7=""))) == {"key": "é", "floor": 0, "versions": [[7, ""]]}


def test_compare_quotes_a_short_prefix_of_a_long_key(capsys: pytest.CaptureFixture[str]) -> None:
    long = "k" * 2**20
    assert compare([[], [pb.Fragment(key=long, floor=5)]], ["s1", "s2"]) == 1
    out = capsys.readouterr().out
    assert len(out) < 200
    assert f"({2**20} characters)" in out
