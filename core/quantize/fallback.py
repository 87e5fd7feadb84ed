"""Which quantized nodes to keep in float32, chosen by their measured effect on the task
metric: an accumulated fallback that checks every step (pure; measuring is a parameter).

Why measured: ranking nodes by the error each adds to its own output (the proxy in
core.quantize.sensitivity) says where the signal changes, not what the task loses. On a
real convolutional detector, keeping the 2, 4, 8 and 16 nodes with the largest added
error in float32 made the metric worse each time and never reached a 1-point target.

The method is Intel Neural Compressor's "accumulated fallback", with a check per step:

1. Units: each ranked node alone, when the screening budget (half the measurements)
   covers them all; otherwise contiguous blocks of nodes in graph order, so that every
   node is screened (blocks hold at most `max_nodes`). Units are screened in the
   proxy's order, most suspect first, as far as the screening budget goes.
2. Screening: each unit alone in float32, the task metric measured. A unit that meets
   the target alone ends the screening: no set of units is smaller.
3. Accumulation: units sorted by their measured gain (the metric with the unit alone
   in float32 against the base's), best first. Each is added to the kept set and the set
   measured; a step that does not bring the metric closer to the original (a smaller
   drop, by more than `resolution`) is reverted and the next unit tried. It stops when
   the target holds, or the measurement budget is spent, or no unit is left (that fits
   the node budget).
4. Trim: when the target holds with several units, each (least gain first) is tried out
   of the set, and left out when the target still holds: fewer float32 nodes, more speed.

The curve (float32 nodes -> metric) holds the base and each accepted step, so by
construction it moves toward the original at every point; reverted steps are trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Metric drops closer than this count as equal: a step must beat it to be kept.
DEFAULT_RESOLUTION = 1e-4

Phase = Literal["screen", "accumulate", "trim"]


@dataclass(frozen=True)
class Unit:
    """Nodes kept in float32 together: one node, or a block of neighbours."""

    name: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class MetricJudgement:
    """A metric value seen by the job's metric target (core.verdict's rules)."""

    drop: float  # in the target's units (absolute or relative to the original)
    met: bool


class TrialFailed(Exception):
    """A variant could not be produced or measured; `fatal` when no other can be either
    (e.g. the mode does not honour exclusions at all)."""

    def __init__(self, note: str, *, fatal: bool = False) -> None:
        super().__init__(note)
        self.note = note
        self.fatal = fatal


# nodes kept in float32 -> the task metric of that variant (raises TrialFailed)
Evaluate = Callable[[tuple[str, ...]], float]
Judge = Callable[[float], MetricJudgement]


@dataclass
class Trial:
    phase: Phase
    unit: str
    nodes: tuple[str, ...]
    metric: float | None  # None: the variant failed (see note)
    drop: float | None
    met: bool
    accepted: bool = False  # its set was kept (screening: the first accumulated unit)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "phase": self.phase,
            "unit": self.unit,
            "nodes": len(self.nodes),
            "metric": self.metric,
            "metric_drop": self.drop,
            "met_metric_target": self.met,
            "accepted": self.accepted,
        }
        if self.note:
            row["note"] = self.note
        return row


@dataclass(frozen=True)
class CurvePoint:
    nodes: int  # kept in float32
    metric: float
    drop: float
    unit: str | None  # the unit this step added (None: the base)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "metric": self.metric,
            "metric_drop": self.drop,
            "unit": self.unit,
        }


@dataclass
class FallbackPlan:
    kept: tuple[str, ...]  # the nodes to keep in float32 (empty: none helped)
    metric: float  # the kept set's measured metric (the base's when nothing is kept)
    drop: float
    met: bool
    curve: list[CurvePoint]
    trials: list[Trial]
    units: str  # "nodes" or "blocks of up to N neighbouring nodes"
    gains: list[tuple[str, float]] = field(default_factory=list)  # screened, best first
    stopped: str = ""


def make_units(
    ranked: Sequence[str],
    positions: Mapping[str, int],
    screen_budget: int,
    max_nodes: int,
) -> tuple[list[Unit], str]:
    """The units to screen, in the proxy's order, and how they were formed.

    `ranked` holds node names, most suspect first; `positions` their place in the graph
    (nodes without one keep their rank as place). Blocks are contiguous in graph order,
    never larger than `max_nodes`, and ordered by their most suspect member.
    """
    nodes = list(dict.fromkeys(ranked))
    if len(nodes) <= screen_budget:
        return [Unit(node, (node,)) for node in nodes], "nodes"
    rank = {node: index for index, node in enumerate(nodes)}
    in_graph = sorted(nodes, key=lambda node: (positions.get(node, rank[node]), rank[node]))
    size = max(1, min(math.ceil(len(nodes) / max(screen_budget, 1)), max_nodes))
    blocks = [tuple(in_graph[start : start + size]) for start in range(0, len(in_graph), size)]
    blocks.sort(key=lambda block: min(rank[node] for node in block))
    units = [Unit(_block_name(block), block) for block in blocks]
    return units, "nodes" if size == 1 else f"blocks of up to {size} neighbouring nodes"


def _block_name(block: tuple[str, ...]) -> str:
    return f"{block[0]} .. {block[-1]} ({len(block)} nodes)" if len(block) > 1 else block[0]


def accumulated_fallback(
    ranked: Sequence[str],
    base_metric: float,
    evaluate: Evaluate,
    judge: Judge,
    *,
    max_nodes: int,
    max_trials: int,
    positions: Mapping[str, int] | None = None,
    resolution: float = DEFAULT_RESOLUTION,
) -> FallbackPlan:
    """Choose the nodes to keep in float32 (see the module docstring).

    `ranked`: the candidate nodes, most suspect first (the error proxy's order);
    `base_metric`: the metric with every node quantized; `evaluate(nodes)`: the metric
    with `nodes` in float32; `judge(metric)`: its drop and whether the target holds.
    At most `max_trials` calls to `evaluate`, and never a set above `max_nodes` nodes.
    """
    base = judge(base_metric)
    screen_budget = max(1, max_trials // 2)
    units, formed = make_units(ranked, positions or {}, screen_budget, max_nodes)
    plan = FallbackPlan(
        kept=(),
        metric=base_metric,
        drop=base.drop,
        met=base.met,
        curve=[CurvePoint(0, base_metric, base.drop, None)],
        trials=[],
        units=formed,
    )
    if base.met:
        plan.stopped = "the base meets the metric target: nothing to keep in float32"
        return plan
    if not units:
        plan.stopped = "no quantized node could be matched to the float32 graph"
        return plan
    runner = _Runner(evaluate, judge, plan.trials, max_trials)

    # 1-2: screening, each unit alone
    screened: list[tuple[Unit, Trial]] = []
    for unit in units:
        if len(plan.trials) >= screen_budget or runner.fatal:
            break
        trial = runner.run("screen", unit, unit.nodes)
        if trial.metric is not None:
            screened.append((unit, trial))
            if trial.met:
                break
    screened.sort(key=lambda item: (_drop(item[1]), len(item[0].nodes)))
    plan.gains = [(unit.name, base.drop - _drop(trial)) for unit, trial in screened]
    gain = dict(plan.gains)

    # 3: accumulation, best gain first; a step that does not help is reverted
    kept: list[Unit] = []
    for unit, solo in screened:
        if plan.met:
            break
        nodes = _nodes(kept) + unit.nodes
        if len(nodes) > max_nodes:
            continue
        if not kept:
            trial = solo  # measured alone already
        elif runner.spent or runner.fatal:
            break
        else:
            trial = runner.run("accumulate", unit, nodes)
        if trial.metric is None or _drop(trial) >= plan.drop - resolution:
            continue
        trial.accepted = True
        kept.append(unit)
        plan.kept, plan.metric, plan.drop, plan.met = nodes, trial.metric, _drop(trial), trial.met
        plan.curve.append(CurvePoint(len(nodes), trial.metric, _drop(trial), unit.name))

    # 4: trim, least gain first, what the target does not need
    if plan.met and len(kept) > 1:
        for unit in sorted(kept, key=lambda u: gain.get(u.name, 0.0)):
            if runner.spent or runner.fatal or len(kept) == 1:
                break
            rest = [u for u in kept if u is not unit]
            trial = runner.run("trim", unit, _nodes(rest))
            if trial.metric is not None and trial.met:
                trial.accepted = True
                kept = rest
                plan.kept, plan.metric, plan.drop = _nodes(kept), trial.metric, _drop(trial)
    plan.stopped = _why_stopped(plan, runner, len(screened), len(units), max_nodes, max_trials)
    return plan


def _nodes(units: Sequence[Unit]) -> tuple[str, ...]:
    return tuple(node for unit in units for node in unit.nodes)


def _drop(trial: Trial) -> float:
    return math.inf if trial.drop is None else trial.drop


def _why_stopped(
    plan: FallbackPlan,
    runner: _Runner,
    screened: int,
    units: int,
    max_nodes: int,
    max_trials: int,
) -> str:
    fatal = f"{runner.fatal}; " if runner.fatal else ""
    if plan.met:
        return f"{fatal}the metric target holds with {len(plan.kept)} nodes in float32"
    if not plan.kept:
        if not screened:
            return f"{fatal}no unit could be measured"
        return f"{fatal}no node kept in float32 brought the metric closer to the original"
    where = f"the best set keeps {len(plan.kept)} nodes in float32 at a drop of {plan.drop:.4g}"
    if runner.fatal:
        return f"{fatal}{where}"
    if runner.spent:
        return f"the measurement budget (max_fallback_trials {max_trials}) is spent; {where}"
    if screened < units:
        return (
            f"{units - screened} of {units} units were not screened within the budget "
            f"(max_fallback_trials {max_trials}); {where}"
        )
    return f"every unit was tried and the metric target still fails; {where}"


class _Runner:
    """Calls `evaluate` within the budget and records every trial."""

    def __init__(self, evaluate: Evaluate, judge: Judge, trials: list[Trial], budget: int) -> None:
        self._evaluate = evaluate
        self._judge = judge
        self._trials = trials
        self._budget = budget
        self.fatal = ""

    @property
    def spent(self) -> bool:
        return len(self._trials) >= self._budget

    def run(self, phase: Phase, unit: Unit, nodes: tuple[str, ...]) -> Trial:
        try:
            metric = self._evaluate(nodes)
        except TrialFailed as failure:
            trial = Trial(phase, unit.name, nodes, None, None, False, note=failure.note)
            if failure.fatal:
                self.fatal = failure.note
        else:
            verdict = self._judge(metric)
            trial = Trial(phase, unit.name, nodes, metric, verdict.drop, verdict.met)
        self._trials.append(trial)
        return trial
