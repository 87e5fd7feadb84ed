"""What a search optimises, and which trial it returns.

- weighted: maximise O = alpha * P - beta * C / C_ref (one objective). C_ref is the
  same cost of the job's original model, so C / C_ref is "how many originals this
  costs": beta is the metric a model as costly as the original gives up, whatever the
  cost's unit (parameters, MACs, bytes or milliseconds).
- constrained: maximise P; a trial over a limit is infeasible (not trained, pruned).
- pareto: maximise P and minimise every cost; the result is the non-dominated front.

P is the best epoch's validation metric (higher is better for every task metric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import StepFailed
from core.search.pareto import front
from core.search.records import TrialRecord
from core.spec import (
    ConstrainedObjective,
    ParetoObjective,
    Targets,
    WeightedObjective,
)

ObjectiveConfig = WeightedObjective | ConstrainedObjective | ParetoObjective
# constrained objective's limit -> the cost it limits
LIMITS = {
    "max_latency_ms": "latency_ms",
    "max_params": "parameters",
    "max_size_bytes": "size_bytes",
}


@dataclass(frozen=True)
class Goal:
    config: ObjectiveConfig
    # the original model's costs: C_ref of the weighted objective
    reference: Mapping[str, float]

    @property
    def directions(self) -> list[str]:
        if isinstance(self.config, ParetoObjective):
            return ["maximize"] + ["minimize"] * len(self.config.costs)
        return ["maximize"]

    @property
    def costs_shown(self) -> list[str]:
        """The costs the front is drawn against."""
        if isinstance(self.config, WeightedObjective):
            return [self.config.cost]
        if isinstance(self.config, ParetoObjective):
            return list(self.config.costs)
        return [cost for limit, cost in LIMITS.items() if getattr(self.config, limit) is not None]

    def values(self, metric: float, costs: Mapping[str, float]) -> list[float]:
        """The values Optuna optimises for a trial of `metric` and `costs`."""
        if isinstance(self.config, WeightedObjective):
            return [self.weighted(metric, costs)]
        if isinstance(self.config, ParetoObjective):
            return [metric, *(float(costs[name]) for name in self.config.costs)]
        return [metric]

    def weighted(self, metric: float, costs: Mapping[str, float]) -> float:
        assert isinstance(self.config, WeightedObjective)
        name = self.config.cost
        return self.config.alpha * metric - self.config.beta * float(costs[name]) / max(
            float(self.reference[name]), 1e-12
        )

    def intermediate(self, metric: float, costs: Mapping[str, float]) -> float:
        """What a single-objective trial reports per epoch for pruning: the objective
        itself, so a cheap model is not pruned for a metric its cost makes up for."""
        return self.values(metric, costs)[0]

    def violations(self, costs: Mapping[str, float]) -> list[str]:
        """The limits of a constrained objective that `costs` exceed."""
        if not isinstance(self.config, ConstrainedObjective):
            return []
        missed = []
        for limit, cost in LIMITS.items():
            bound = getattr(self.config, limit)
            if bound is not None and float(costs[cost]) > bound:
                missed.append(f"{cost} {float(costs[cost]):.6g} > {limit} {bound:g}")
        return missed

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = self.config.model_dump()
        if isinstance(self.config, WeightedObjective):
            name = self.config.cost
            described["formula"] = (
                f"{self.config.alpha:g} * metric - {self.config.beta:g} * {name} / "
                f"{float(self.reference[name]):.6g} (the original model's {name})"
            )
        described["directions"] = self.directions
        described["cost_reference"] = dict(self.reference)
        return described


@dataclass(frozen=True)
class Chosen:
    record: TrialRecord
    reason: str


def choose(goal: Goal, records: Sequence[TrialRecord], targets: Targets) -> Chosen:
    """The trial the step returns, and why.

    weighted: the highest O; constrained: the highest metric (every completed trial is
    within the limits); pareto: the front's highest metric among the members that meet
    the job's latency and size targets (all members when none does). Ties go to the
    lower cost, then to the earlier trial. Raises StepFailed when no trial completed.
    """
    complete = [r for r in records if r.state == "complete" and r.metric is not None]
    if not complete:
        states = sorted({r.state for r in records})
        raise StepFailed(
            f"no search trial completed ({len(records)} trials, states {states}): widen "
            "the space, relax the limits, or raise max_trials / time_budget_s"
        )
    first_cost = goal.costs_shown[0] if goal.costs_shown else "parameters"

    def tie_break(record: TrialRecord) -> tuple[float, int]:
        return (record.cost(first_cost), record.number)

    if isinstance(goal.config, WeightedObjective):
        best = min(complete, key=lambda r: (-_value(r), *tie_break(r)))
        return Chosen(best, f"the highest weighted objective, {_value(best):.6g}")
    if isinstance(goal.config, ConstrainedObjective):
        best = min(complete, key=lambda r: (-_metric(r), *tie_break(r)))
        return Chosen(
            best,
            f"the highest metric ({_metric(best):.6g}) among the {len(complete)} trials "
            "within the limits",
        )
    members = front_records(goal, complete)
    meeting = [r for r in members if not _missed_targets(r, targets)]
    pool = meeting or members
    best = min(pool, key=lambda r: (-_metric(r), *tie_break(r)))
    if meeting and len(meeting) < len(members):
        why = f"the front's highest metric ({_metric(best):.6g}) within the job's targets"
    elif meeting:
        why = f"the front's highest metric ({_metric(best):.6g})"
    else:
        why = (
            f"the front's highest metric ({_metric(best):.6g}); no front member meets "
            f"the job's targets ({', '.join(_missed_targets(best, targets))})"
        )
    return Chosen(best, why)


def front_records(goal: Goal, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The completed trials no other completed trial dominates on (metric, costs shown)."""
    complete = [r for r in records if r.state == "complete" and r.metric is not None]
    points = [(_metric(r), *(r.cost(name) for name in goal.costs_shown)) for r in complete]
    directions = ["maximize"] + ["minimize"] * len(goal.costs_shown)
    return [complete[index] for index in front(points, directions)]


def _missed_targets(record: TrialRecord, targets: Targets) -> list[str]:
    missed = []
    if targets.max_latency_ms is not None and record.cost("latency_ms") > targets.max_latency_ms:
        missed.append(f"latency_ms > {targets.max_latency_ms:g}")
    if targets.max_size_bytes is not None and record.cost("size_bytes") > targets.max_size_bytes:
        missed.append(f"size_bytes > {targets.max_size_bytes}")
    return missed


def _metric(record: TrialRecord) -> float:
    assert record.metric is not None
    return record.metric


def _value(record: TrialRecord) -> float:
    assert record.values
    return record.values[0]
