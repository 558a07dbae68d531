"""DURATION and SIZE, as the growth flags take them (docs/operations.md, "Growth over time").

A DURATION is a whole number with a unit: `s`, `m`, `h` or `d` (`90s`, `15m`,
`24h`, `7d`). A SIZE is a whole number of bytes with an optional unit: `KB`,
`MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024). Zero,
negative numbers, a missing unit (DURATION) and unknown units are refused
with a ValueError that says what was expected.
"""

from __future__ import annotations

import re
from typing import Final

DURATION_UNITS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
"""Milliseconds per unit."""
SIZE_UNITS: Final = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_NUMBER_AND_UNIT: Final = re.compile(r"\s*([+-]?[0-9]+)\s*([A-Za-z]*)\s*")


def parse_duration(text: str) -> int:
    """A DURATION in milliseconds: `90s` is 90000."""
    number, unit = _split(text, "DURATION", "90s, 15m, 24h or 7d")
    if unit not in DURATION_UNITS:
        what = "has no unit" if not unit else f"has unknown unit {unit!r}"
        raise ValueError(
            f"{text!r} {what}: a DURATION is a positive number with s, m, h or d (90s, 15m, 24h, 7d)"
        )
    return number * DURATION_UNITS[unit]


def parse_size(text: str) -> int:
    """A SIZE in bytes: `2GB` is 2000000000, `1KiB` 1024, `512` 512."""
    number, unit = _split(text, "SIZE", "512MB, 2GB or 1GiB")
    if unit not in SIZE_UNITS:
        raise ValueError(
            f"{text!r} has unknown unit {unit!r}: a SIZE is a positive number of bytes"
            " with an optional KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024)"
        )
    return number * SIZE_UNITS[unit]


def _split(text: str, kind: str, examples: str) -> tuple[int, str]:
    match = _NUMBER_AND_UNIT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a {kind} (for example {examples})")
    number = int(match.group(1))
    if number <= 0:
        raise ValueError(f"{text!r}: a {kind} must be positive (for example {examples})")
    return number, match.group(2)


def format_size(size: int) -> str:
    """Bytes for a person: 1234567 is "1.2 MB" (powers of 1000, as the flags' KB, MB, GB)."""
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def format_duration(ms: int) -> str:
    """Milliseconds in the largest unit that divides them: 86400000 is "1d"."""
    for unit in ("d", "h", "m", "s"):
        if ms % DURATION_UNITS[unit] == 0:
            return f"{ms // DURATION_UNITS[unit]}{unit}"
    return f"{ms}ms"
