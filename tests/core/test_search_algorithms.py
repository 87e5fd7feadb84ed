"""Regularized evolution on a synthetic study, the pruners on a real trial, and MACs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from core.context import MeasureSettings, RunContext
from core.families import MlpFamily
from core.formats import inspect_model
from core.registry import StepData
from core.search.algorithms import make_pruner, regularized_evolution
from core.search.cost import onnx_macs, torch_macs
from core.search.objective import Goal
from core.search.problem import prepare
from core.search.space import distributions, narrow
from core.search.trial import TrialRunner
from core.spec import SearchStep, TaskSpec
from tests.factories import DigitsCNN, digits_arrays

SPACE = distributions(narrow(MlpFamily, {"dropout": 0.0}))


def completed(number_metric: list[float], params: list[dict[str, Any]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for value, values in zip(number_metric, params, strict=True):
        study.add_trial(optuna.trial.create_trial(value=value, params=values, distributions=SPACE))
    return study


def some_params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "layers": int(rng.integers(1, 5)),
        "units": int(rng.integers(16, 1025)),
        "activation": ["relu", "gelu", "tanh"][int(rng.integers(3))],
        "dropout": 0.0,
    }


def differences(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(a[key] != b[key] for key in a)


def test_evolution_draws_at_random_until_the_population_is_full() -> None:
    sampler = regularized_evolution(SPACE, population_size=4, sample_size=2, seed=0)
    study = completed([0.5, 0.6, 0.7], [some_params(i) for i in range(3)])
    trial = study.ask()
    assert sampler.sample_relative(study, trial._cached_frozen_trial, SPACE) == {}  # type: ignore[attr-defined]


def test_evolution_mutates_one_parameter_of_the_tournament_winner() -> None:
    # sample = the whole population: the winner is its best member, every time
    sampler = regularized_evolution(SPACE, population_size=4, sample_size=4, seed=1)
    params = [some_params(i) for i in range(4)]
    study = completed([0.5, 0.9, 0.7, 0.6], params)
    for _ in range(10):
        child = sampler.sample_relative(study, study.ask()._cached_frozen_trial, SPACE)  # type: ignore[attr-defined]
        assert differences(params[1], child) == 1


def test_evolution_ages_out_the_oldest_trial_however_good() -> None:
    sampler = regularized_evolution(SPACE, population_size=4, sample_size=4, seed=2)
    params = [some_params(i) for i in range(5)]
    # trial 0 is the best but the oldest: the population is trials 1..4, best is 3
    study = completed([0.99, 0.5, 0.6, 0.8, 0.7], params)
    child = sampler.sample_relative(study, study.ask()._cached_frozen_trial, SPACE)  # type: ignore[attr-defined]
    assert differences(params[3], child) == 1


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import export_onnx, train_digits_cnn

    images, _ = digits_arrays("test")
    folder = tmp_path_factory.mktemp("pruning")
    return export_onnx(train_digits_cnn(epochs=2), images[:1], folder / "digits.onnx", opset=17)


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_a_trial_far_below_the_others_is_pruned_after_its_first_epoch(
    pruner: str, digits_model: Path, tmp_path: Path
) -> None:
    config = SearchStep.model_validate(
        {
            "method": "search",
            "family": "mlp",
            "space": {"layers": 1, "units": 16, "dropout": 0.0},
            "epochs": 3,
            "learning_rate": 1e-7,
            "pruner": pruner,
        }
    )
    images, labels = (a[:200] for a in digits_arrays("train"))
    data = StepData(
        eval_arrays={"input": images[:50], "label": labels[:50]},
        calibration_arrays={"input": images[:50]},
        inputs=inspect_model(digits_model).inputs,
        task=TaskSpec(),
        train_arrays={"input": images, "label": labels},
        original_model_path=digits_model,
    )
    ctx = RunContext(work_dir=tmp_path, measure=MeasureSettings(1, 1, 3))
    problem = prepare(config, data, digits_model, ctx)
    space = distributions(problem.space)
    goal = Goal(config.objective, {"latency_ms": 1.0, "parameters": 1, "macs": 1, "size_bytes": 1})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, max_trials=5))
    fixed = {"layers": 1, "units": 16, "activation": "relu", "dropout": 0.0}
    for _ in range(2):  # two good trials that reached 0.9 from their first epoch on
        study.add_trial(
            optuna.trial.create_trial(
                value=0.9,
                params=fixed,
                distributions=space,
                intermediate_values={1: 0.9, 2: 0.9, 3: 0.9},
                system_attrs={"completed_rung_0": 0.9},
            )
        )
    runner = TrialRunner(problem, config, goal, space, ctx, seed=0, pruning=True)
    study.optimize(runner, n_trials=1)

    last = study.trials[-1]
    assert last.state == optuna.trial.TrialState.PRUNED
    assert last.user_attrs["note"].startswith("pruned after epoch 1")
    assert len(last.user_attrs["epoch_metrics"]) == 1


def test_macs_counted_on_the_onnx_graph_match_torch_s_count(tmp_path: Path) -> None:
    from tests.factories import export_onnx

    model = DigitsCNN().eval()
    example = torch.zeros(1, 1, 8, 8)
    path = export_onnx(model, example.numpy(), tmp_path / "cnn.onnx", opset=17)
    # conv 1->16 and 16->32 on 8x8 (3x3), then 2048x128 and 128x10
    expected = 64 * 16 * 9 + 64 * 32 * 16 * 9 + 2048 * 128 + 128 * 10
    assert onnx_macs(path) == expected == torch_macs(model, example)
