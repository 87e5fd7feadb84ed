"""The training loop of a student: seeded, on ctx.device, evaluated every epoch, stopped
early when the eval metric stops improving, and ending on the best epoch's weights.

The loop knows nothing of distillation: the loss is a function of the batch's inputs,
the student's outputs and the batch's row indices (which pick the teacher's cached
outputs and the labels), so the distilled student and its label-only twin share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.context import RunContext
from core.data import Feeds, sample_count
from core.errors import StepFailed
from core.formats import TensorInfo
from core.training import batches, select_output, tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

# (batch inputs, the student's output, the batch's row indices) -> loss
LossFn = Callable[[list["torch.Tensor"], "torch.Tensor", np.ndarray], "torch.Tensor"]
# the metric of the module on the eval data; higher is better (as every task metric is)
EvaluateFn = Callable[["nn.Module"], float]

_CANCEL_CHECK_BATCHES = 20
# SGD's momentum: plain SGD without it trains far slower at the same learning rate.
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainingPlan:
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Literal["adam", "adamw", "sgd"]
    weight_decay: float
    # epochs without a better eval metric before stopping; None: every epoch runs
    patience: int | None
    seed: int


@dataclass
class TrainingRun:
    """What a run did. Epoch 0 is the student as it started (for a student derived
    from the teacher, training may not beat it: then it is kept as it was)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("-inf")
    stopped_early: bool = False
    training_s: float = 0.0


def train(
    module: nn.Module,
    loss_fn: LossFn,
    feeds: Feeds,
    inputs: list[TensorInfo],
    output_index: int,
    evaluate: EvaluateFn,
    plan: TrainingPlan,
    ctx: RunContext,
    *,
    label: str = "distill",
    progress: tuple[float, float] = (0.0, 1.0),
    extra_parameters: Iterable[torch.nn.Parameter] = (),
) -> TrainingRun:
    """Train `module` in place for up to plan.epochs and leave it, in eval mode, holding
    the weights of the epoch with the best eval metric (ties: the later epoch).

    `inputs` name the feeds in the order the module takes them. Every epoch is reported
    through ctx.report_step within `progress` of the step (loss, eval metric, best epoch);
    cancellation is checked every few batches. `extra_parameters` (e.g. feature
    projections) are optimized too. Raises StepFailed when the loss is not finite.
    """
    import torch

    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    device = torch.device(ctx.device)
    module.to(device)
    optimizer = _optimizer([*module.parameters(), *extra_parameters], plan)
    shuffle = np.random.default_rng(plan.seed)
    samples = sample_count(feeds)
    run = TrainingRun()
    best_state = _snapshot(module)
    run.best_metric = evaluate(module)
    run.history.append({"epoch": 0, "train_loss": None, "eval_metric": run.best_metric})
    stale_epochs = 0
    for epoch in range(1, plan.epochs + 1):
        module.train()
        losses = []
        for batch, rows in enumerate(batches(shuffle, samples, plan.batch_size)):
            if batch % _CANCEL_CHECK_BATCHES == 0:
                ctx.check_cancelled()
            batch_inputs = tensors(feeds, rows, inputs, device)
            optimizer.zero_grad()
            outputs = select_output(module(*batch_inputs), output_index)
            loss = loss_fn(batch_inputs, outputs, rows)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        train_loss = float(np.mean(losses))
        if not np.isfinite(train_loss):
            raise StepFailed(
                f"{label} training diverged in epoch {epoch} (loss {train_loss}): lower "
                f"learning_rate (now {plan.learning_rate})"
            )
        eval_metric = evaluate(module)
        # A tie keeps the later, longer-trained weights (a small eval set's accuracy
        # saturates early) but does not reset the patience: only gains do.
        stale_epochs = 0 if eval_metric > run.best_metric else stale_epochs + 1
        if eval_metric >= run.best_metric:
            run.best_metric, run.best_epoch = eval_metric, epoch
            best_state = _snapshot(module)
        run.history.append({"epoch": epoch, "train_loss": train_loss, "eval_metric": eval_metric})
        start, end = progress
        ctx.report_step(
            start + (end - start) * epoch / plan.epochs,
            f"{label} epoch {epoch}/{plan.epochs}",
            phase=label,
            epoch=epoch,
            loss=train_loss,
            eval_metric=eval_metric,
            best_epoch=run.best_epoch,
        )
        if plan.patience is not None and stale_epochs >= plan.patience:
            run.stopped_early = epoch < plan.epochs
            break
    module.load_state_dict(best_state)
    module.eval()
    run.training_s = time.perf_counter() - started
    return run


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (a device copy would double GPU memory)."""
    return {
        name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()
    }


def _optimizer(parameters: list[torch.nn.Parameter], plan: TrainingPlan) -> torch.optim.Optimizer:
    import torch

    if plan.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=plan.learning_rate,
            momentum=SGD_MOMENTUM,
            weight_decay=plan.weight_decay,
        )
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=plan.learning_rate, weight_decay=plan.weight_decay)
    return torch.optim.Adam(parameters, lr=plan.learning_rate, weight_decay=plan.weight_decay)
