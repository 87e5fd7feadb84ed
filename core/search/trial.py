"""One trial: sample an architecture, measure what it costs, train it, score it.

The architecture is exported untrained and measured first (costs do not depend on the
weights), so a trial over a hard limit is never trained. Training is the distill step's
loop (core.training.fit): labels alone, or the distill step's loss against the
original model's outputs when the search is teacher-guided. After every epoch the
validation metric is reported to Optuna, which may prune the trial. The trained weights
stay in the trial's folder on this worker, for the step to export should it choose this
trial.

Trials are measured on an export by torch's TorchScript exporter: it writes the same
operators as the dynamo exporter the step's final model goes through, in a tenth of
the time (0.2-0.5 s against 2-4 s per small model on 2 busy cores), which decides how
many trials fit in a budget. The final model is exported and measured again.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.context import RunContext
from core.distill.loss import OutputLoss, classification_loss, label_loss, regression_loss
from core.errors import JobCancelled, StepFailed
from core.families import FamilyConfig
from core.search import records
from core.search.cost import Costs, measure_costs
from core.search.objective import Goal
from core.search.problem import SearchProblem
from core.search.space import config_of
from core.spec import SearchStep
from core.training import LossFn, TrainingPlan, TrainingRun, fit, predict

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.distributions import BaseDistribution
    from torch import nn

WEIGHTS_FILE = "weights.npz"
# The dynamo exporter writes opset 18 natively; converting its graphs down fails for
# some ops (ReduceMean's axes) and costs seconds, so the search exports at 18 or above.
MIN_EXPORT_OPSET = 18


def worker_label() -> str:
    """Which process ran a trial (the same form as the worker's own name)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_dir(ctx: RunContext, number: int) -> Path:
    return ctx.work_dir / "trials" / f"{number:05d}"


def export_opset(problem: SearchProblem) -> int:
    return max(problem.opset, MIN_EXPORT_OPSET)


class TrialRunner:
    """The Optuna objective: `runner(trial)` returns the objective value(s)."""

    def __init__(
        self,
        problem: SearchProblem,
        config: SearchStep,
        goal: Goal,
        search_space: dict[str, BaseDistribution],
        ctx: RunContext,
        *,
        seed: int,
        pruning: bool,
        deadline: Callable[[], float] | None = None,
    ) -> None:
        self.problem = problem
        self.config = config
        self.goal = goal
        self.search_space = search_space
        self.ctx = ctx
        self.seed = seed
        self.pruning = pruning
        # the search's end (unix time): a trial still training then is stopped
        self.deadline = deadline

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        import torch
        from optuna import TrialPruned

        params = suggest(trial, self.search_space)
        architecture = config_of(self.problem.family, params)
        seed = self.seed + trial.number
        trial.set_user_attr(records.ARCHITECTURE, architecture.model_dump())
        trial.set_user_attr(records.WORKER, worker_label())
        trial.set_user_attr(records.SEED, seed)

        folder = trial_dir(self.ctx, trial.number)
        torch.manual_seed(seed)
        module = self.problem.build(architecture)
        costs = self.measure(module, folder / "untrained.onnx")
        trial.set_user_attr(records.COSTS, costs.as_dict())
        missed = self.goal.violations(costs.as_dict())
        if missed:
            note = "infeasible, not trained: " + "; ".join(missed)
            trial.set_user_attr(records.NOTE, note)
            raise TrialPruned(note)

        epoch_metrics: list[float] = []
        started = time.perf_counter()
        timed = self._until_deadline()
        try:
            run = train_module(
                self.problem,
                self.config,
                module,
                seed,
                timed,
                on_epoch=self._reporter(trial, costs, epoch_metrics),
            )
        except JobCancelled:
            if self.ctx.is_cancelled():
                raise
            # the time ran out, not the job: one huge architecture must not hold the
            # search (and the job) past its budget
            note = f"stopped at its time limit after {len(epoch_metrics)} epoch(s)"
            trial.set_user_attr(records.NOTE, note)
            raise TrialPruned(note) from None
        finally:
            trial.set_user_attr(records.EPOCH_METRICS, epoch_metrics)
            trial.set_user_attr(records.TRAIN_S, round(time.perf_counter() - started, 3))
            if epoch_metrics:
                trial.set_user_attr(records.METRIC, max(epoch_metrics))
        trial.set_user_attr(records.METRIC, run.best_metric)
        save_weights(module, folder / WEIGHTS_FILE)
        values = self.goal.values(run.best_metric, costs.as_dict())
        return values[0] if len(values) == 1 else values

    def _until_deadline(self) -> RunContext:
        """The context training runs under: cancelled by the job, at the search's
        deadline (read once: it moves only when a resumed attempt starts) or after
        max_trial_s."""
        ends = [] if self.deadline is None else [self.deadline()]
        if self.config.max_trial_s is not None:
            ends.append(time.time() + self.config.max_trial_s)
        if not ends:
            return self.ctx
        end = min(ends)
        cancelled = self.ctx.is_cancelled
        return dataclasses.replace(self.ctx, is_cancelled=lambda: cancelled() or time.time() >= end)

    def measure(self, module: nn.Module, path: Path) -> Costs:
        import torch

        self.ctx.check_cancelled()
        export_for_costs(module, self.problem, path)
        example = torch.from_numpy(self.problem.latency_feeds[self.problem.input.name][:1])
        return measure_costs(
            path,
            module,
            example,
            self.problem.latency_feeds,
            self.problem.latency_batch_size,
            self.ctx.measure,
            self.ctx.device,
        )

    def _reporter(self, trial: optuna.Trial, costs: Costs, epoch_metrics: list[float]) -> Any:
        from optuna import TrialPruned

        def on_epoch(epoch: int, metric: float) -> None:
            epoch_metrics.append(metric)
            if not self.pruning:
                return
            trial.report(self.goal.intermediate(metric, costs.as_dict()), step=epoch)
            # the last epoch's model is trained already: pruning it would save nothing
            if epoch < self.config.epochs and trial.should_prune():
                note = f"pruned after epoch {epoch} (validation metric {metric:.4g})"
                trial.set_user_attr(records.NOTE, note)
                raise TrialPruned(note)

        return on_epoch


def suggest(trial: optuna.Trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    params: dict[str, Any] = {}
    for name, distribution in search_space.items():
        if isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)  # type: ignore[arg-type]
        elif isinstance(distribution, FloatDistribution):
            params[name] = trial.suggest_float(
                name, distribution.low, distribution.high, log=distribution.log
            )
        else:
            params[name] = trial.suggest_int(
                name,
                int(distribution.low),  # type: ignore[attr-defined]
                int(distribution.high),  # type: ignore[attr-defined]
                log=bool(distribution.log),  # type: ignore[attr-defined]
            )
    return params


def train_module(
    problem: SearchProblem,
    config: SearchStep,
    module: nn.Module,
    seed: int,
    ctx: RunContext,
    *,
    on_epoch: Any = None,
) -> TrainingRun:
    """Train `module` in place for config.epochs (every epoch runs: the pruner, not
    patience, stops poor trials) and leave it holding its best epoch's weights.
    `on_epoch(epoch, validation metric)` is called after every epoch (not for the
    untrained epoch 0); it may raise optuna.TrialPruned."""
    import torch

    device = torch.device(ctx.device)
    calls = {"count": 0}

    def evaluate(candidate: nn.Module) -> float:
        candidate.eval()
        outputs = predict(
            candidate,  # type: ignore[arg-type]  # any module taking the input positionally
            problem.validation.feeds,
            max(config.batch_size, 64),
            0,
            [problem.input],
            device,
        )
        metric = problem.validation.metric(outputs)
        epoch, calls["count"] = calls["count"], calls["count"] + 1
        if epoch > 0 and on_epoch is not None:
            on_epoch(epoch, metric)
        return metric

    plan = TrainingPlan(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer="adam",
        weight_decay=0.0,
        patience=None,
        seed=seed,
    )
    # Epoch events of every trial would flood the job's log: trials report themselves
    # once, when they end. Cancellation is still checked through ctx.report.
    quiet = dataclasses.replace(ctx, on_progress=_silent)
    try:
        return fit(
            module,
            loss_function(problem, config, ctx.device),
            problem.feeds,
            [problem.input],
            0,
            evaluate,
            plan,
            quiet,
            label="search trial",
        )
    except StepFailed as exc:  # a diverging architecture fails its trial, not the search
        raise StepFailed(f"trial training failed: {exc}") from exc


def loss_function(problem: SearchProblem, config: SearchStep, device_name: str) -> LossFn:
    """Labels alone; or, teacher-guided, the distill step's loss against the original
    model's outputs (mixed with the labels when there are any)."""
    import torch

    device = torch.device(device_name)
    classification = problem.task.kind == "classification"
    teacher = problem.teacher_targets
    labels = problem.labels
    output_loss: OutputLoss = "cosine" if problem.task.kind == "embedding" else "mse"

    def loss(inputs: list[torch.Tensor], outputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        truth = torch.from_numpy(labels[rows]).to(device) if labels is not None else None
        if not config.teacher:
            assert truth is not None  # prepare() refuses a search with neither
            return label_loss(outputs, truth, classification=classification)
        targets = torch.from_numpy(teacher[rows]).to(device)
        if classification:
            return classification_loss(
                outputs, targets, truth, temperature=config.temperature, alpha=config.distill_alpha
            )
        return regression_loss(
            outputs, targets, truth, kind=output_loss, alpha=config.distill_alpha
        )

    return loss


def export_for_costs(module: nn.Module, problem: SearchProblem, path: Path) -> Path:
    """The module as ONNX through the TorchScript exporter (see the module docstring),
    batch dim dynamic unless the original pins it."""
    import torch

    module.to("cpu").eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(problem.latency_feeds[problem.input.name][:1])
    pinned = problem.latency_batch_size if _pins_batch(problem) else None
    if pinned is not None:
        example = torch.from_numpy(problem.latency_feeds[problem.input.name][:pinned])
    # the transformer's inference fast path is one fused op no ONNX exporter knows
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice, tracing
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[problem.input.name],
                output_names=[problem.output.name],
                opset_version=export_opset(problem),
                dynamo=False,
                dynamic_axes=None if pinned else {problem.input.name: {0: "batch"}},
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return path


def save_weights(module: nn.Module, path: Path) -> Path:
    """The weights as .npz (loaded back without pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: value.detach().cpu().numpy() for name, value in module.state_dict().items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    import torch

    with np.load(path, allow_pickle=False) as stored:
        module.load_state_dict({name: torch.from_numpy(stored[name]) for name in stored.files})
    return module.eval()


def rebuild(problem: SearchProblem, architecture: dict[str, Any], seed: int) -> nn.Module:
    """The trial's module as it started (same config, same seed, same initial weights)."""
    import torch

    config: FamilyConfig = problem.family.model_validate(architecture)
    torch.manual_seed(seed)
    return problem.build(config)


def _pins_batch(problem: SearchProblem) -> bool:
    dim = problem.input.shape[0] if problem.input.shape else None
    return isinstance(dim, int) and dim > 0


def _silent(progress: float, message: str, data: dict[str, Any]) -> None:
    return None
