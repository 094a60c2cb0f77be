"""Parse and format human units: durations ("5m"), counts ("10M"), byte sizes ("512MB")."""

from __future__ import annotations

import re

from pocketlm.common.errors import ConfigError

_DURATION_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
}
_COUNT_SUFFIX = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "m": 10**6,
    "M": 10**6,
    "b": 10**9,
    "B": 10**9,
    "g": 10**9,
    "G": 10**9,
    "t": 10**12,
    "T": 10**12,
}
_BYTE_SUFFIX = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(text: str | float | int) -> float:
    """'90s', '5m', '1h30m', '2.5m' or a bare number of seconds -> seconds (float > 0)."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ConfigError(f"cannot read duration {text!r}: use forms like 30s, 5m, 1h30m")
            seconds = 0.0
            for number, unit in parts:
                if unit not in _DURATION_UNITS:
                    raise ConfigError(f"unknown time unit {unit!r} in {text!r}: use s, m, h or d")
                seconds += float(number) * _DURATION_UNITS[unit]
    if seconds <= 0:
        raise ConfigError(f"duration must be positive, got {text!r}")
    return seconds


def parse_count(text: str | int) -> int:
    """'10M', '2.5k', '1_000' or an int -> int >= 0."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbBgGtT]?)\s*", text.replace("_", ""))
        if not m:
            raise ConfigError(f"cannot read count {text!r}: use forms like 5000, 10k, 20M, 1B")
        value = round(float(m.group(1)) * _COUNT_SUFFIX[m.group(2)])
    if value < 0:
        raise ConfigError(f"count must be >= 0, got {text!r}")
    return value


def parse_bytes(text: str | int) -> int:
    """'64MB', '1GiB', '4096' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _BYTE_SUFFIX:
        raise ConfigError(f"cannot read size {text!r}: use forms like 512MB, 1GiB, 4096")
    return round(float(m.group(1)) * _BYTE_SUFFIX[m.group(2).lower()])


def format_bytes(n_bytes: float) -> str:
    """1536 -> '1.5 KB' (decimal units)."""
    value = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    value = float(n)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def format_duration(seconds: float) -> str:
    """333.2 -> '5m33s'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
