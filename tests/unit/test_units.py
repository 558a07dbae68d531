"""DURATION and SIZE (docs/operations.md, "Growth over time")."""

from __future__ import annotations

import pytest

from kvs.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("15m", 900_000), ("24h", 86_400_000), ("7d", 604_800_000), (" 1s ", 1000)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10", "has no unit"),
        ("10ms", "unknown unit 'ms'"),
        ("0s", "must be positive"),
        ("-5s", "must be positive"),
        ("1.5h", "is not a DURATION"),
        ("", "is not a DURATION"),
        ("s", "is not a DURATION"),
    ],
)
def test_bad_durations_say_what_is_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("1KiB", 1024),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "must be positive"),
        ("-1MB", "must be positive"),
        ("2TB", "unknown unit"),
        ("1.5GB", "not a SIZE"),
    ],
)
def test_bad_sizes_say_what_is_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_size(text)


def test_formats() -> None:
    assert [format_size(n) for n in (999, 1000, 1_500_000, 2_000_000_000)] == [
        "999 B",
        "1.0 KB",
        "1.5 MB",
        "2.0 GB",
    ]
    assert [format_duration(ms) for ms in (86_400_000, 5_400_000, 90_000, 1500)] == [
        "1d",
        "90m",
        "90s",
        "1500ms",
    ]
