"""Pareto fronts on hand-made points, and the plot."""

from __future__ import annotations

import math

from pocketlm.evals.pareto import Panel, dominates, pareto_front, plot_pareto


def test_dominates_needs_one_strictly_better_axis():
    assert dominates((2.0, 1.0), (1.0, 1.0), (True, True))
    assert not dominates((1.0, 1.0), (1.0, 1.0), (True, True))
    assert not dominates((2.0, 0.5), (1.0, 1.0), (True, True))
    assert dominates((1.0, 0.5), (1.0, 1.0), (True, False))  # lower second axis is better


def test_front_of_speed_up_and_bits_per_byte_down():
    # (decode tok/s, bpb): c is beaten by b (faster and better), e by d; a, b, d trade off
    points = [(10.0, 1.0), (20.0, 1.2), (15.0, 1.3), (40.0, 1.5), (30.0, 1.6)]
    assert pareto_front(points, (True, False)) == [0, 1, 3]


def test_front_of_size_down_and_accuracy_up():
    points = [(100.0, 0.9), (50.0, 0.9), (25.0, 0.7), (60.0, 0.95)]
    assert pareto_front(points, (False, True)) == [1, 2, 3]


def test_equal_points_share_the_front_and_missing_ones_are_off_it():
    points = [(1.0, 1.0), (1.0, 1.0), (None, 9.0), (2.0, math.nan), (0.5, 0.5)]
    assert pareto_front(points, (True, True)) == [0, 1]
    assert pareto_front([], (True, True)) == []
    assert pareto_front([(3.0, None)], (True, True)) == []


def test_a_single_point_is_optimal_and_every_axis_counts():
    assert pareto_front([(1.0, 2.0, 3.0)], (True, True, True)) == [0]
    points = [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0), (0.0, 2.0, 0.0)]
    assert pareto_front(points, (True, True, True)) == [1, 2]


def test_plot_writes_a_png_with_missing_points(tmp_path):
    out = plot_pareto(
        ["a", "b", "c"],
        [1.0, 1.2, None],
        "bits/byte",
        False,
        [Panel([10.0, 20.0, 30.0], "decode tokens/s", True), Panel([5.0, 2.0, 1.0], "MB", False)],
        tmp_path / "p.png",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
