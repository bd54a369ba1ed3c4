# -*- test-case-name: tests.unit.cache.test_sizes -*-
"""
Sizes as people write them on a command line or in a TOML file:
C{20GiB}, C{500MB}, C{1.5G}, C{1024}.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)


def parseSize(text: str) -> int:
    """
    Parse a size into bytes.

    SI (C{kB}, C{MB}, C{GB}, C{TB}) and IEC (C{KiB}, C{MiB}, C{GiB}, C{TiB})
    units are accepted in any case, the trailing C{B} optional; a bare number
    is bytes.  A fractional result is rounded down to whole bytes.

    @raise ValueError: With a one-line message saying what was wrong.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 20GiB, 500MB or 1024)")
    number, unit = match.groups()
    unit = unit.lower()
    if unit.endswith("b"):
        unit = unit[:-1]
    if unit not in _UNITS:
        raise ValueError(
            f"unknown size unit in {text!r}: use kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        raise ValueError(f"not a size: {text!r}") from None
    return int(value * _UNITS[unit])


def formatSize(size: int) -> str:
    """
    A size for people to read (C{1.5 GiB}), for stats and logs.
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
