"""Core counts and the server's decode-thread default."""

from __future__ import annotations

import pytest

from pocketlm.common.device import serving_threads, usable_cores


def test_usable_cores_is_positive_and_within_the_machine():
    import os

    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("requested", "cores", "expected"), [(0, 1, 1), (0, 2, 1), (0, 16, 15), (3, 2, 3), (1, 8, 1)]
)
def test_serving_threads_leaves_one_core_to_the_http_side_unless_told(requested, cores, expected):
    assert serving_threads(requested, cores) == expected
