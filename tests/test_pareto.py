"""Pareto frontiers on hand-made points: direction, ties, a single point."""

import pytest

from ecommerce_slm.pareto import Point, dominates, frontier


def test_lower_cost_frontier():
    points = [Point("big", 500, 0.90), Point("mid", 200, 0.88), Point("worse_mid", 250, 0.80), Point("small", 90, 0.50)]
    assert frontier(points, x_higher_is_better=False) == ["small", "mid", "big"]


def test_higher_is_better_axis_flips_dominance():
    points = [Point("slow", 20, 0.90), Point("fast", 140, 0.85), Point("fast_bad", 130, 0.70)]
    assert frontier(points, x_higher_is_better=True) == ["slow", "fast"]
    # read as a cost axis instead, "slow" (20) is cheapest and most accurate: it dominates both
    assert frontier(points, x_higher_is_better=False) == ["slow"]


def test_ties_stay_on_the_frontier_together():
    points = [Point("a", 100, 0.8), Point("b", 100, 0.8), Point("c", 100, 0.7)]
    assert frontier(points, x_higher_is_better=False) == ["a", "b"]
    assert not dominates(points[0], points[1], False) and not dominates(points[1], points[0], False)


def test_equal_accuracy_cheaper_wins():
    points = [Point("a", 100, 0.8), Point("b", 120, 0.8)]
    assert frontier(points, x_higher_is_better=False) == ["a"]
    assert frontier(points, x_higher_is_better=True) == ["b"]


def test_single_point_is_its_own_frontier():
    assert frontier([Point("only", 1.0, 0.1)], x_higher_is_better=False) == ["only"]


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        frontier([Point("a", 1, 1), Point("a", 2, 2)], False)
