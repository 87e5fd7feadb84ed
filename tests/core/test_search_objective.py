"""What a search optimises and which trial it returns, on synthetic trial values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from core.errors import StepFailed
from core.search.objective import Goal, choose, front_records
from core.search.pareto import dominates, front
from core.search.records import TrialRecord
from core.spec import ConstrainedObjective, ParetoObjective, Targets, WeightedObjective

REFERENCE = {"parameters": 1000.0, "macs": 5000.0, "size_bytes": 4000.0, "latency_ms": 2.0}


def trial(
    number: int, metric: float, latency_ms: float, parameters: int = 100, **kw: Any
) -> TrialRecord:
    costs = {
        "parameters": parameters,
        "macs": 10,
        "size_bytes": 4 * parameters,
        "latency_ms": latency_ms,
    }
    return TrialRecord(
        number=number,
        state=kw.pop("state", "complete"),
        params={},
        metric=metric,
        costs=costs,
        **kw,
    )


def with_values(goal: Goal, records: list[TrialRecord]) -> list[TrialRecord]:
    """The records as Optuna would store them: completed trials carry their values."""
    return [
        dataclasses.replace(r, values=goal.values(r.metric or 0.0, r.costs or {}))
        if r.state == "complete"
        else r
        for r in records
    ]


def test_the_weighted_objective_divides_the_cost_by_the_original_s() -> None:
    goal = Goal(WeightedObjective(alpha=1.0, beta=0.1, cost="latency_ms"), REFERENCE)
    # a model as slow as the original gives up beta of metric
    assert goal.values(0.9, {"latency_ms": 2.0})[0] == pytest.approx(0.8)
    assert goal.values(0.9, {"latency_ms": 0.2})[0] == pytest.approx(0.89)
    assert goal.directions == ["maximize"]


def test_weighted_picks_the_best_trade_off_not_the_best_metric() -> None:
    goal = Goal(WeightedObjective(beta=0.1, cost="latency_ms"), REFERENCE)
    records = with_values(goal, [trial(0, 0.95, 4.0), trial(1, 0.93, 0.4), trial(2, 0.90, 0.2)])
    chosen = choose(goal, records, Targets())
    # O: 0.95 - 0.2 = 0.75; 0.93 - 0.02 = 0.91; 0.90 - 0.01 = 0.89
    assert chosen.record.number == 1
    assert "weighted objective" in chosen.reason


def test_constrained_flags_every_limit_missed_and_picks_the_best_metric() -> None:
    goal = Goal(
        ConstrainedObjective(kind="constrained", max_latency_ms=1.0, max_params=500), REFERENCE
    )
    assert goal.violations({"latency_ms": 1.5, "parameters": 600, "size_bytes": 1}) == [
        "latency_ms 1.5 > max_latency_ms 1",
        "parameters 600 > max_params 500",
    ]
    assert goal.violations({"latency_ms": 1.0, "parameters": 500, "size_bytes": 1}) == []
    records = with_values(
        goal,
        [
            trial(0, 0.97, 3.0, state="pruned", note="infeasible"),
            trial(1, 0.91, 0.9),
            trial(2, 0.93, 0.95),
            trial(3, 0.93, 0.5),  # same metric, cheaper: wins the tie
        ],
    )
    assert choose(goal, records, Targets()).record.number == 3
    assert goal.costs_shown == ["latency_ms", "parameters"]


def test_the_front_keeps_exactly_the_undominated_trials() -> None:
    directions = ["maximize", "minimize"]
    assert dominates([0.9, 1.0], [0.8, 1.0], directions)
    assert not dominates([0.9, 1.0], [0.9, 1.0], directions)
    assert not dominates([0.9, 2.0], [0.8, 1.0], directions)
    points = [[0.9, 2.0], [0.8, 1.0], [0.85, 3.0], [0.95, 4.0], [0.8, 1.0]]
    assert front(points, directions) == [0, 1, 3, 4]


def test_pareto_picks_the_front_s_best_metric_within_the_job_s_targets() -> None:
    goal = Goal(ParetoObjective(kind="pareto", costs=["latency_ms"]), REFERENCE)
    records = with_values(
        goal, [trial(0, 0.98, 3.0), trial(1, 0.95, 1.0), trial(2, 0.90, 0.5), trial(3, 0.89, 2.0)]
    )
    assert [r.number for r in front_records(goal, records)] == [0, 1, 2]
    assert choose(goal, records, Targets()).record.number == 0
    within = choose(goal, records, Targets(max_latency_ms=1.5))
    assert within.record.number == 1 and "within the job's targets" in within.reason
    none_meet = choose(goal, records, Targets(max_latency_ms=0.1))
    assert none_meet.record.number == 0 and "no front member meets" in none_meet.reason


def test_a_search_without_a_completed_trial_fails_saying_so() -> None:
    goal = Goal(WeightedObjective(), REFERENCE)
    with pytest.raises(StepFailed, match="no search trial completed"):
        choose(
            goal, [trial(0, 0.5, 1.0, state="pruned"), trial(1, 0.5, 1.0, state="fail")], Targets()
        )
