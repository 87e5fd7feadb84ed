"""Latency-aware op selection: which nodes to quantize so the model gets faster.

Pure decision logic over measured per-node costs (core.quantize.node_profile measures
them in ONNX Runtime). A *unit* is what quantizes together: an op the quantizer turns
into an integer kernel, with the activations ORT fuses into it (Relu, Clip). Each unit
costs `fp32_us` when left float and `int8_us` when quantized, per batch size. A *link* is
a tensor between two units, or between a unit and the float world (graph inputs and
outputs, ops that stay float): when its two ends differ, a QuantizeLinear or
DequantizeLinear runs on it, at `cost_us`.

Minimising "sum of unit costs + conversions at region borders" is a binary labelling
with a cost on every edge whose ends differ, which an s-t minimum cut solves exactly:
a region of winners pays Q/DQ only at its borders, a lone node whose win is smaller
than its border cost stays float, and a slightly losing node between two winning
regions is quantized when that saves the two conversions around it. Latencies at
several batch sizes are weighed by the float model's total at each size, so every
deployment batch size counts alike (the judge ranks speed by the mean of the ratios).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FLOAT = ""  # the float world: graph inputs and outputs, ops that are never quantized


@dataclass(frozen=True)
class Unit:
    """Nodes that quantize together, and what they cost each way (us per batch size)."""

    name: str  # the unit's integer-kernel node (a Conv, MatMul, ...)
    op_type: str
    nodes: tuple[str, ...]  # graph node names quantized with it (name first)
    fp32_us: Mapping[int, float]
    int8_us: Mapping[int, float]


@dataclass(frozen=True)
class Link:
    """A tensor from unit `source` to unit `target` (FLOAT for the float world)."""

    tensor: str
    source: str
    target: str
    cost_us: Mapping[int, float]  # the Q or DQ it needs when its ends differ


@dataclass(frozen=True)
class Selection:
    quantize: tuple[str, ...]  # unit names, in the order given
    nodes_to_quantize: tuple[str, ...]  # every node of the chosen units
    rows: tuple[dict[str, Any], ...]  # the per-unit table for the report
    estimated_us: Mapping[int, float]  # per batch size, the plan's modelled latency
    fp32_us: Mapping[int, float]
    all_int8_us: Mapping[int, float]


def batch_weights(units: Sequence[Unit]) -> dict[int, float]:
    """1 / (the float units' total) per batch size: each size's share counts alike."""
    sizes = sorted({b for unit in units for b in unit.fp32_us})
    totals = {b: sum(unit.fp32_us.get(b, 0.0) for unit in units) for b in sizes}
    return {b: 1.0 / totals[b] if totals[b] > 0 else 0.0 for b in sizes}


def _weighted(costs: Mapping[int, float], weights: Mapping[int, float]) -> float:
    return sum(costs.get(b, 0.0) * w for b, w in weights.items())


def select(units: Sequence[Unit], links: Sequence[Link]) -> Selection:
    """The units to quantize: the labelling of least modelled latency (minimum cut)."""
    weights = batch_weights(units)
    names = [unit.name for unit in units]
    known = set(names)
    chosen = _min_cut_source_side(
        {u.name: _weighted(u.fp32_us, weights) for u in units},
        {u.name: _weighted(u.int8_us, weights) for u in units},
        [
            (link.source, link.target, _weighted(link.cost_us, weights))
            for link in links
            if {link.source, link.target} <= known | {FLOAT} and link.source != link.target
        ],
    )
    rows = _rows(units, links, chosen)
    sizes = sorted(weights)
    return Selection(
        quantize=tuple(n for n in names if n in chosen),
        nodes_to_quantize=tuple(node for u in units if u.name in chosen for node in u.nodes),
        rows=tuple(rows),
        estimated_us={b: _modelled(units, links, chosen, b) for b in sizes},
        fp32_us={b: _modelled(units, links, set(), b) for b in sizes},
        all_int8_us={b: _modelled(units, links, known, b) for b in sizes},
    )


def _modelled(units: Sequence[Unit], links: Sequence[Link], chosen: set[str], batch: int) -> float:
    total = sum((u.int8_us if u.name in chosen else u.fp32_us).get(batch, 0.0) for u in units)
    return total + sum(
        link.cost_us.get(batch, 0.0)
        for link in links
        if (link.source in chosen) != (link.target in chosen)
    )


def _border_us(name: str, links: Sequence[Link], chosen: set[str]) -> dict[int, float]:
    """The conversions `name` alone would need with its neighbours as they are chosen."""
    border: dict[int, float] = {}
    for link in links:
        if name not in (link.source, link.target) or link.source == link.target:
            continue
        other = link.target if link.source == name else link.source
        if other in chosen and other != name:
            continue
        for b, cost in link.cost_us.items():
            border[b] = border.get(b, 0.0) + cost
    return border


def _regions(units: Sequence[Unit], links: Sequence[Link], chosen: set[str]) -> dict[str, int]:
    """Connected regions of chosen units, numbered from 1 in graph order."""
    neighbours: dict[str, set[str]] = {name: set() for name in chosen}
    for link in links:
        if link.source in chosen and link.target in chosen:
            neighbours[link.source].add(link.target)
            neighbours[link.target].add(link.source)
    region: dict[str, int] = {}
    for unit in units:
        if unit.name not in chosen or unit.name in region:
            continue
        number = len(set(region.values())) + 1
        stack = [unit.name]
        while stack:
            name = stack.pop()
            if name not in region:
                region[name] = number
                stack.extend(neighbours[name] - region.keys())
    return region


def _rows(units: Sequence[Unit], links: Sequence[Link], chosen: set[str]) -> list[dict[str, Any]]:
    regions = _regions(units, links, chosen)
    rows = []
    for unit in units:
        gain = {b: unit.fp32_us.get(b, 0.0) - unit.int8_us.get(b, 0.0) for b in unit.fp32_us}
        wins = sum(gain.values()) > 0
        border = _border_us(unit.name, links, chosen)
        if unit.name in chosen:
            why = (
                "int8 faster"
                if wins
                else "int8 slower, quantized with its region: leaving it float would add "
                "Q/DQ costing more"
            )
        elif wins:
            why = "int8 faster, but less than the Q/DQ its border would need: left float"
        else:
            why = "float32 faster"
        rows.append(
            {
                "node": unit.name,
                "op_type": unit.op_type,
                "nodes": list(unit.nodes),
                "fp32_us": {str(b): round(v, 2) for b, v in unit.fp32_us.items()},
                "int8_us": {str(b): round(v, 2) for b, v in unit.int8_us.items()},
                "border_us": {str(b): round(v, 2) for b, v in border.items()},
                "decision": "int8" if unit.name in chosen else "fp32",
                "region": regions.get(unit.name),
                "why": why,
            }
        )
    return rows


def _min_cut_source_side(
    float_cost: Mapping[str, float],
    int8_cost: Mapping[str, float],
    edges: Sequence[tuple[str, str, float]],
) -> set[str]:
    """Units on the int8 side of a minimum cut.

    Source = int8, sink = float (FLOAT is the sink). source->u carries u's float cost
    (cut when u is float), u->sink its int8 cost (cut when u is int8), and each link a
    capacity both ways (cut when its ends differ). The source side of the residual graph
    is the smallest optimal int8 set: ties stay float.
    """
    source, sink = "\x00int8", FLOAT
    capacity: dict[str, dict[str, float]] = {}

    def add(a: str, b: str, c: float) -> None:
        if c <= 0:
            return
        capacity.setdefault(a, {}).setdefault(b, 0.0)
        capacity[a][b] += c
        capacity.setdefault(b, {}).setdefault(a, 0.0)

    for name in float_cost:
        add(source, name, float_cost[name])
        add(name, sink, int8_cost[name])
        capacity.setdefault(name, {})
    for a, b, c in edges:
        add(a, b, c)
        add(b, a, c)
    capacity.setdefault(source, {})
    capacity.setdefault(sink, {})
    eps = 1e-12
    while True:  # Edmonds-Karp: graphs here have hundreds of units at most
        parent: dict[str, str] = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            a = queue.popleft()
            for b, c in capacity[a].items():
                if c > eps and b not in parent:
                    parent[b] = a
                    queue.append(b)
        if sink not in parent:
            break
        path = []
        b = sink
        while b != source:
            path.append((parent[b], b))
            b = parent[b]
        flow = min(capacity[a][b] for a, b in path)
        for a, b in path:
            capacity[a][b] -= flow
            capacity[b][a] += flow
    return {name for name in parent if name in float_cost}


__all__ = ["FLOAT", "Link", "Selection", "Unit", "batch_weights", "select"]
