"""The one training loop (core.training.fit), as distillation uses it: best epoch kept,
early stopping, seeding, progress, cancellation and divergence, with controlled metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from core.context import RunContext
from core.errors import JobCancelled, StepFailed
from core.formats import TensorInfo
from core.training import TrainingPlan, fit

INPUTS = [TensorInfo(name="input", dtype="float32", shape=["batch", 4])]
FEEDS = {"input": np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)}
TARGETS = FEEDS["input"] @ np.arange(8, dtype=np.float32).reshape(4, 2)


def plan(**overrides: Any) -> TrainingPlan:
    settings: dict[str, Any] = {
        "epochs": 8,
        "batch_size": 16,
        "learning_rate": 0.01,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "patience": 2,
        "seed": 0,
    }
    return TrainingPlan(**(settings | overrides))


def mse_to_targets(inputs: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> Any:
    return nn.functional.mse_loss(outputs, torch.from_numpy(TARGETS[rows]))


class ScriptedMetric:
    """Eval metrics in a fixed order, keeping a copy of the weights at each call."""

    def __init__(self, metrics: list[float]) -> None:
        self._metrics: Iterator[float] = iter(metrics)
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, module: nn.Module) -> float:
        self.weights.append({k: v.clone() for k, v in module.state_dict().items()})
        return next(self._metrics)


def run(module: nn.Module, evaluate: Any, tmp_path: Path, **kwargs: Any) -> Any:
    ctx: RunContext = kwargs.pop("ctx", RunContext(work_dir=tmp_path))
    return fit(
        module,
        mse_to_targets,
        FEEDS,
        INPUTS,
        0,
        evaluate,
        kwargs.pop("plan", plan()),
        ctx,
        label="distill",
    )


def test_training_ends_on_the_best_epochs_weights_and_stops_after_patience(
    tmp_path: Path,
) -> None:
    module = nn.Linear(4, 2)
    # epoch 0 (untrained), 1, 2 (best), 3, 4: two epochs without a better metric
    metric = ScriptedMetric([0.1, 0.5, 0.7, 0.6, 0.65, 0.9])

    result = run(module, metric, tmp_path)

    assert result.best_epoch == 2 and result.best_metric == 0.7
    assert result.stopped_early
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3, 4]  # 0.9 never reached
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, metric.weights[2][name])
    assert not module.training


def test_a_tie_keeps_the_later_epoch_without_resetting_the_patience(tmp_path: Path) -> None:
    module = nn.Linear(4, 2)
    metric = ScriptedMetric([0.1, 0.7, 0.6, 0.7, 0.9])

    result = run(module, metric, tmp_path)

    assert result.best_epoch == 3 and result.stopped_early
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, metric.weights[3][name])


def test_without_patience_every_epoch_runs(tmp_path: Path) -> None:
    metric = ScriptedMetric([0.1, 0.2, 0.1, 0.1, 0.1])
    result = run(nn.Linear(4, 2), metric, tmp_path, plan=plan(epochs=4, patience=None))

    assert len(result.history) == 5 and not result.stopped_early
    assert result.best_epoch == 1


def test_a_student_no_epoch_improves_on_is_returned_as_it_started(tmp_path: Path) -> None:
    module = nn.Linear(4, 2)
    start = {k: v.clone() for k, v in module.state_dict().items()}

    result = run(module, ScriptedMetric([0.9, 0.5, 0.5]), tmp_path, plan=plan(epochs=2))

    assert result.best_epoch == 0
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, start[name])


def test_training_learns_and_is_seeded(tmp_path: Path) -> None:
    def negative_loss(module: nn.Module) -> float:
        with torch.no_grad():
            outputs = module(torch.from_numpy(FEEDS["input"]))
        return -float(nn.functional.mse_loss(outputs, torch.from_numpy(TARGETS)))

    first, second = nn.Linear(4, 2), nn.Linear(4, 2)
    second.load_state_dict(first.state_dict())
    settings = plan(patience=None, epochs=20, learning_rate=0.1)
    result = run(first, negative_loss, tmp_path, plan=settings)
    run(second, negative_loss, tmp_path, plan=settings)

    assert result.history[-1]["eval_metric"] > result.history[0]["eval_metric"] / 2  # MSE halved
    for name, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[name])


def test_every_epoch_is_reported_with_its_loss_and_metric(tmp_path: Path) -> None:
    events: list[tuple[float, str, dict[str, Any]]] = []
    ctx = RunContext(work_dir=tmp_path, on_progress=lambda p, m, d: events.append((p, m, d)))

    run(
        nn.Linear(4, 2),
        ScriptedMetric([0.0, 0.1, 0.2, 0.3]),
        tmp_path,
        ctx=ctx,
        plan=plan(epochs=3),
    )

    assert [e[2]["epoch"] for e in events] == [1, 2, 3]
    assert [e[2]["eval_metric"] for e in events] == [0.1, 0.2, 0.3]
    assert all(np.isfinite(e[2]["loss"]) and e[2]["phase"] == "distill" for e in events)
    assert [e[0] for e in events] == sorted(e[0] for e in events)


def test_a_cancelled_job_stops_training(tmp_path: Path) -> None:
    ctx = RunContext(work_dir=tmp_path, is_cancelled=lambda: True)
    with pytest.raises(JobCancelled):
        run(nn.Linear(4, 2), ScriptedMetric([0.0] * 10), tmp_path, ctx=ctx)


def test_a_diverging_loss_fails_the_step_with_a_hint(tmp_path: Path) -> None:
    def nan_loss(inputs: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> Any:
        return outputs.sum() * float("nan")

    with pytest.raises(StepFailed, match="learning_rate"):
        fit(
            nn.Linear(4, 2),
            nan_loss,
            FEEDS,
            INPUTS,
            0,
            ScriptedMetric([0.0] * 10),
            plan(),
            RunContext(work_dir=tmp_path),
        )
