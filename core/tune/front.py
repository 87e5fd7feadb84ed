"""The Pareto front of measured candidates: metric (higher is better) against costs
(lower is better). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    metric: float
    costs: Mapping[str, float]


def dominates(a: Point, b: Point) -> bool:
    """`a` is at least as good as `b` on everything and better on something."""
    names = set(a.costs) & set(b.costs)
    no_worse = a.metric >= b.metric and all(a.costs[c] <= b.costs[c] for c in names)
    better = a.metric > b.metric or any(a.costs[c] < b.costs[c] for c in names)
    return no_worse and better


def pareto_front(points: Sequence[Point]) -> list[str]:
    """The names of the points no other point dominates, in their order."""
    return [p.name for p in points if not any(dominates(q, p) for q in points if q is not p)]
