"""Rates, durations and wire time as exact integers.

Rates are bits per second (int), times are picoseconds (int). Strings such as
"256kbps", "10.3125Gbps", "20us" and "1.5ms" parse exactly with Decimal, so no
float ever holds a timestamp.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import numpy as np

PS_PER_S = 10**12

RATE_UNITS = {"bps": 1, "kbps": 10**3, "mbps": 10**6, "gbps": 10**9, "tbps": 10**12}
DURATION_UNITS = {
    "ps": 1, "ns": 10**3, "us": 10**6, "µs": 10**6, "ms": 10**9, "s": 10**12,
}

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-zµ/]+)\s*$")


class UnitError(ValueError):
    """A rate or duration string that cannot be understood."""


def _split(text: str, units: dict[str, int], what: str) -> tuple[Decimal, int]:
    if not isinstance(text, str):
        raise UnitError(f"expected a {what} string such as {_example(what)}, got {text!r}")
    match = _QUANTITY.match(text)
    if not match:
        raise UnitError(f"cannot read {what} {text!r}; write it like {_example(what)}")
    number, unit = match.groups()
    scale = units.get(unit.lower().replace("b/s", "bps"))
    if scale is None:
        raise UnitError(f"unknown unit {unit!r} in {text!r}; use one of {', '.join(units)}")
    try:
        return Decimal(number), scale
    except InvalidOperation:  # pragma: no cover - the regex admits only numbers
        raise UnitError(f"cannot read number in {text!r}") from None


def _example(what: str) -> str:
    return '"100Mbps"' if what == "rate" else '"20us"'


def _exact_int(value: Decimal, text: str, resolution: str) -> int:
    if value != value.to_integral_value():
        raise UnitError(f"{text!r} is finer than 1 {resolution}")
    return int(value)


def parse_rate(text: str) -> int:
    """'256kbps' -> 256000 bits per second. Must be positive and a whole number of b/s."""
    number, scale = _split(text, RATE_UNITS, "rate")
    bps = _exact_int(number * scale, text, "bit/s")
    if bps <= 0:
        raise UnitError(f"rate {text!r} must be positive")
    return bps


def parse_duration(text: str) -> int:
    """'1.5ms' -> 1_500_000_000 picoseconds. Must be >= 0 and a whole number of ps."""
    number, scale = _split(text, DURATION_UNITS, "duration")
    return _exact_int(number * scale, text, "ps")


def bits_time_ps(bits, rate_bps: int):
    """Time for `bits` to pass at `rate_bps`, rounded up to the picosecond.

    Works on ints and on int64 numpy arrays. Rounding up means a bit is never
    claimed to have arrived before physics allows.
    """
    if isinstance(bits, np.ndarray):
        return (bits.astype(np.int64) * PS_PER_S + (rate_bps - 1)) // rate_bps
    return (int(bits) * PS_PER_S + rate_bps - 1) // rate_bps


def format_ps(ps: int) -> str:
    """Readable signed duration: '-565 us', '67.2 ns', '15.625 ms'."""
    sign = "-" if ps < 0 else ""
    magnitude = abs(int(ps))
    for unit, scale in (("s", 10**12), ("ms", 10**9), ("us", 10**6), ("ns", 10**3)):
        if magnitude >= scale:
            return f"{sign}{_trim(Decimal(magnitude) / scale)} {unit}"
    return f"{sign}{magnitude} ps"


def format_rate(bps: int) -> str:
    for unit, scale in (("Tb/s", 10**12), ("Gb/s", 10**9), ("Mb/s", 10**6), ("kb/s", 10**3)):
        if bps >= scale:
            return f"{_trim(Decimal(bps) / scale)} {unit}"
    return f"{bps} b/s"


def _trim(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
