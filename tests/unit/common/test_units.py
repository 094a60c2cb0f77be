from __future__ import annotations

import pytest

from pocketlm.common.errors import ConfigError
from pocketlm.common.units import (
    format_bytes,
    format_count,
    format_duration,
    parse_bytes,
    parse_count,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2.5m", 150), ("45", 45), (12, 12)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes please", "m5", "0s", "-3", "5y"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_counts_and_sizes():
    assert (
        parse_count("10M") == 10_000_000
        and parse_count("2.5k") == 2500
        and parse_count("1_000") == 1000
    )
    assert parse_bytes("64MB") == 64_000_000 and parse_bytes("1GiB") == 2**30
    with pytest.raises(ConfigError):
        parse_count("lots")
    assert (
        format_bytes(1536) == "1.5 KB"
        and format_count(1_234_567) == "1.23M"
        and format_duration(333) == "5m33s"
    )
