"""What the main runner and its helpers share: the prepared problem, the goal, the
study with a sampler and pruner, and the trial runner; and how a finished trial is
reported as an event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.context import RunContext
from core.registry import StepData
from core.search.algorithms import make_pruner, make_sampler
from core.search.objective import Goal
from core.search.problem import SearchProblem, prepare
from core.search.records import TrialRecord, record_of
from core.search.space import distributions
from core.search.study import storage_of, study_name
from core.search.trial import TrialRunner
from core.spec import SearchStep

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

MAIN_ROLE = 0


@dataclass
class Session:
    config: SearchStep
    problem: SearchProblem
    search_space: dict[str, BaseDistribution]
    storage: BaseStorage | None
    name: str
    seed: int
    role: int  # 0: the job's own runner; 1..n: helpers

    @classmethod
    def prepare(
        cls, config: SearchStep, data: StepData, original: Path, ctx: RunContext, *, role: int
    ) -> Session:
        problem = prepare(config, data, original, ctx)
        return cls(
            config=config,
            problem=problem,
            search_space=distributions(problem.space),
            storage=storage_of(ctx.search_store),
            name=study_name(ctx.search_store, config),
            seed=ctx.seed if config.seed is None else config.seed,
            role=role,
        )

    @property
    def directions(self) -> list[str]:
        return Goal(self.config.objective, {}).directions

    def sampler(self, trials_so_far: int) -> BaseSampler:
        """Seeded by the job's seed, this runner's role and the trials already stored,
        so a helper or a resumed runner does not replay another runner's draws (a
        random sampler would otherwise propose the same architectures again)."""
        seed = (self.seed * 1_000_003 + self.role * 7_919 + trials_so_far * 104_729) % 2**32
        return make_sampler(
            self.config.algorithm,
            self.search_space,
            seed=seed,
            max_trials=self.config.max_trials,
            population_size=self.config.population_size,
        )

    def pruner(self) -> BasePruner:
        return make_pruner(self.config.resolved_pruner(), max_trials=self.config.max_trials)

    def trial_runner(
        self, goal: Goal, ctx: RunContext, deadline: Callable[[], float]
    ) -> TrialRunner:
        return TrialRunner(
            self.problem,
            self.config,
            goal,
            self.search_space,
            ctx,
            seed=self.seed * 1_000_003 % 2**31,
            pruning=self.config.resolved_pruner() != "none",
            deadline=deadline,
        )


def report_trial(ctx: RunContext, trial: FrozenTrial, fraction: float) -> TrialRecord:
    """One event per finished trial: its number, state, architecture, metric, costs,
    training time and the worker that ran it."""
    record = record_of(trial)
    latency = (record.costs or {}).get("latency_ms")
    metric = f"{record.metric:.4f}" if record.metric is not None else "-"
    cost = f", {latency:.4g} ms" if latency is not None else ""
    ctx.report_step(
        fraction,
        f"search trial {record.number} {record.state}: metric {metric}{cost}",
        trial=record.as_dict(),
    )
    return record


def all_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of the study but those given up before they ran."""
    from core.search.records import is_abandoned

    return [record_of(t) for t in study.get_trials(deepcopy=False) if not is_abandoned(t)]
