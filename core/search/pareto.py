"""Pareto fronts: dominance, the front of a set of points, and the front as JSON and as a
plot (matplotlib's Agg backend: no display on a worker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    better = False
    for x, y, direction in zip(a, b, directions, strict=True):
        if direction == "minimize":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (equal points are all kept)."""
    return [
        index
        for index, point in enumerate(points)
        if not any(dominates(other, point, directions) for other in points)
    ]


def write_json(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True))
    return path


def plot(path: Path, content: dict[str, Any]) -> Path:
    """One panel per cost: every completed trial, the front joined by a line, the
    chosen trial marked. `content` is what `write_json` wrote (see step.front_content)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import NullFormatter

    costs: list[str] = content["costs"]
    trials = content["trials"]
    members = set(content["front"])
    figure, axes = pyplot.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.2), squeeze=False)
    for axis, cost in zip(axes[0], costs, strict=True):
        others = [t for t in trials if t["number"] not in members]
        on_front = sorted((t for t in trials if t["number"] in members), key=lambda t: t[cost])
        axis.scatter(
            [t[cost] for t in others], [t["metric"] for t in others], s=18, c="0.65", label="trial"
        )
        axis.plot(
            [t[cost] for t in on_front],
            [t["metric"] for t in on_front],
            "o-",
            c="tab:blue",
            ms=5,
            label="Pareto front" if len(costs) == 1 else "Pareto front (all costs)",
        )
        chosen = [t for t in trials if t["number"] == content.get("chosen")]
        if chosen:
            axis.scatter(
                [chosen[0][cost]],
                [chosen[0]["metric"]],
                s=140,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=2,
                label="chosen",
            )
        axis.set_xlabel(cost)
        axis.set_ylabel(content["metric_name"])
        if cost in ("parameters", "macs", "size_bytes"):
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # overlapping labels
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(content.get("title", "architecture search"), fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
