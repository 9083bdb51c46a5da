"""Pareto frontiers: which variants no other variant beats on both accuracy and a cost.

Accuracy is always better higher; the cost axis says its own direction (memory and file size lower,
tokens/s higher). A point is dominated when another is at least as good on both axes and strictly
better on one; equal points dominate neither, so ties stay on the frontier together.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    x: float  # the cost axis (peak RSS, tokens/s, file size)
    y: float  # accuracy


def dominates(a: Point, b: Point, x_higher_is_better: bool) -> bool:
    ax, bx = (a.x, b.x) if x_higher_is_better else (-a.x, -b.x)
    return ax >= bx and a.y >= b.y and (ax > bx or a.y > b.y)


def frontier(points: list[Point], x_higher_is_better: bool) -> list[str]:
    """Names of the non-dominated points, by increasing x (the order a frontier line is drawn in)."""
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"point names must be unique, got {names}")
    on_it = [p for p in points if not any(dominates(q, p, x_higher_is_better) for q in points)]
    return [p.name for p in sorted(on_it, key=lambda p: (p.x, p.y))]
