"""Samplers and pruners by name, all Optuna's except regularized evolution.

- random: RandomSampler.
- tpe: TPESampler, multivariate, with the constant liar so that workers sharing a study
  do not all propose the point the running trials are already at.
- nsga2: NSGAIISampler (a genetic algorithm: crowding-distance selection, crossover and
  mutation over generations of `population_size`).
- evolution: regularized (aging) evolution of Real et al. (2019), which Optuna does not
  have: the population is the most recent `population_size` completed trials (older
  ones age out, whatever their score); each new trial copies the best of `sample_size`
  random members and resamples one of its parameters. Until the population is full,
  trials are drawn at random. With several objectives the tournament's winner is a
  random member that no other member of the sample dominates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.search.pareto import dominates

if TYPE_CHECKING:
    from optuna import Study
    from optuna.distributions import BaseDistribution
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial

Algorithm = Literal["random", "evolution", "tpe", "nsga2"]
PrunerName = Literal["none", "median", "successive_halving"]
MAX_DEFAULT_POPULATION = 50


def default_population(max_trials: int) -> int:
    """A quarter of the trials within 4..50: a few generations fit in the budget."""
    return min(MAX_DEFAULT_POPULATION, max(4, max_trials // 4))


def make_sampler(
    algorithm: Algorithm,
    search_space: dict[str, BaseDistribution],
    *,
    seed: int,
    max_trials: int,
    population_size: int | None = None,
) -> BaseSampler:
    from optuna.exceptions import ExperimentalWarning
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

    population = population_size or default_population(max_trials)
    if algorithm == "random":
        return RandomSampler(seed=seed)
    if algorithm == "nsga2":
        return NSGAIISampler(population_size=population, seed=seed)
    if algorithm == "evolution":
        return regularized_evolution(
            search_space, population_size=population, sample_size=max(2, population // 4), seed=seed
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # multivariate, constant_liar
        return TPESampler(
            seed=seed,
            n_startup_trials=max(2, min(10, max_trials // 4)),
            multivariate=True,
            constant_liar=True,
        )


def make_pruner(name: PrunerName, *, max_trials: int) -> BasePruner:
    """Pruners step on epochs. Median: stop a trial whose objective so far is below the
    median of earlier trials at the same epoch, once a few trials finished; successive
    halving: keep the best third at epochs 1, 3, 9, ..."""
    from optuna.pruners import MedianPruner, NopPruner, SuccessiveHalvingPruner

    if name == "median":
        return MedianPruner(n_startup_trials=max(1, min(5, max_trials // 5)), n_warmup_steps=0)
    if name == "successive_halving":
        return SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return NopPruner()


def regularized_evolution(
    search_space: dict[str, BaseDistribution], *, population_size: int, sample_size: int, seed: int
) -> BaseSampler:
    """A RegularizedEvolutionSampler (see the module docstring); built by a function so
    that Optuna is imported only when a search runs."""
    return _evolution_class()(search_space, population_size, sample_size, seed)


_EVOLUTION_CLASS: Any = None


def _evolution_class() -> Any:
    global _EVOLUTION_CLASS
    if _EVOLUTION_CLASS is None:
        _EVOLUTION_CLASS = _define_evolution()
    return _EVOLUTION_CLASS


def _define_evolution() -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.samplers import BaseSampler, RandomSampler
    from optuna.trial import TrialState

    class RegularizedEvolutionSampler(BaseSampler):
        def __init__(
            self,
            search_space: dict[str, BaseDistribution],
            population_size: int,
            sample_size: int,
            seed: int,
        ) -> None:
            if not 2 <= sample_size <= population_size:
                raise ValueError("evolution needs 2 <= sample_size <= population_size")
            self.search_space = dict(search_space)
            self.population_size = population_size
            self.sample_size = sample_size
            self._rng = np.random.RandomState(seed)
            self._random = RandomSampler(seed=seed)

        def reseed_rng(self) -> None:
            self._rng.seed()
            self._random.reseed_rng()

        def infer_relative_search_space(
            self, study: Study, trial: FrozenTrial
        ) -> dict[str, BaseDistribution]:
            return dict(self.search_space)

        def population(self, study: Study) -> list[FrozenTrial]:
            """The most recent `population_size` completed trials: the older age out."""
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return sorted(done, key=lambda t: t.number)[-self.population_size :]

        def sample_relative(
            self,
            study: Study,
            trial: FrozenTrial,
            search_space: dict[str, BaseDistribution],
        ) -> dict[str, Any]:
            population = self.population(study)
            if not search_space or len(population) < self.population_size:
                return {}  # warm-up: every parameter drawn at random
            picks = self._rng.choice(len(population), size=self.sample_size, replace=False)
            parent = self.winner(study, [population[int(i)] for i in picks])
            return self.mutate(parent.params, search_space)

        def winner(self, study: Study, sample: Sequence[FrozenTrial]) -> FrozenTrial:
            directions = [d.name.lower() for d in study.directions]
            if len(directions) == 1:
                sign = 1.0 if directions[0] == "maximize" else -1.0
                return max(sample, key=lambda t: (sign * float(t.values[0]), -t.number))
            undominated = [
                t
                for t in sample
                if not any(dominates(o.values, t.values, directions) for o in sample)
            ]
            return undominated[int(self._rng.randint(len(undominated)))]

        def mutate(
            self, params: dict[str, Any], search_space: dict[str, BaseDistribution]
        ) -> dict[str, Any]:
            """The parent's parameters with one of them (among those with a choice)
            drawn again, different from the parent's value."""
            child = {name: params[name] for name in search_space if name in params}
            mutable = [name for name in sorted(search_space) if _has_choice(search_space[name])]
            if not mutable:
                return child
            name = mutable[int(self._rng.randint(len(mutable)))]
            child[name] = self._other_value(search_space[name], params.get(name))
            return child

        def _other_value(self, distribution: BaseDistribution, current: Any) -> Any:
            if isinstance(distribution, CategoricalDistribution):
                options = [c for c in distribution.choices if c != current]
                return options[int(self._rng.randint(len(options)))]
            if isinstance(distribution, IntDistribution):
                values = [
                    v
                    for v in range(distribution.low, distribution.high + 1, distribution.step)
                    if v != current
                ]
                if distribution.log:  # as likely per octave as the log-uniform draw
                    weights = np.array([1.0 / v for v in values])
                    return int(values[self._rng.choice(len(values), p=weights / weights.sum())])
                return int(values[int(self._rng.randint(len(values)))])
            assert isinstance(distribution, FloatDistribution)
            low, high = distribution.low, distribution.high
            if distribution.log:
                return float(np.exp(self._rng.uniform(np.log(low), np.log(high))))
            return float(self._rng.uniform(low, high))

        def sample_independent(
            self,
            study: Study,
            trial: FrozenTrial,
            param_name: str,
            param_distribution: BaseDistribution,
        ) -> Any:
            return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _has_choice(distribution: BaseDistribution) -> bool:
        if isinstance(distribution, CategoricalDistribution):
            return len(distribution.choices) > 1
        if isinstance(distribution, IntDistribution | FloatDistribution):
            return distribution.high > distribution.low
        return False

    return RegularizedEvolutionSampler
