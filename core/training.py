"""Training on the job's data, shared by every step that trains (QAT, pruning's
fine-tuning, distillation, search trials): feeds and loss targets, the task loss,
batching, prediction, per-epoch evaluation against the job's original, and the one
training loop (`fit`).

torch is imported inside the functions: only jobs that train pay for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds, sample_count
from core.errors import IncompatibleData, StepFailed, UnsupportedModel
from core.formats import TensorInfo
from core.measure import compute_outputs, eval_batch_size, open_session, score
from core.registry import StepData
from core.spec import TaskSpec

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

LossName = Literal["cross_entropy", "kl_divergence", "mse"]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What the model is fine-tuned on: its input feeds and the targets of its loss."""

    feeds: Feeds
    targets: np.ndarray  # class indices (cross_entropy) or the original's outputs
    loss: LossName


def refuse_bound_inputs(task: TaskSpec, method: str) -> None:
    """Steps that run the model in PyTorch feed every input per sample on axis 0: a task
    binding other sample axes, arrays fed whole or constants (or reading its output on
    another axis) is refused, saying so (the spec refuses it at submission too)."""
    bound = sorted(
        name
        for name in task.inputs
        if not task.binding(name).splits_samples or task.binding(name).sample_axis
    )
    if bound or task.output_sample_axis:
        what = f"task.inputs {bound}" if bound else "task.output_sample_axis"
        raise UnsupportedModel(
            f"{method} runs the model in PyTorch, which squeeze does not yet feed through "
            f"{what} (sample axes other than 0, arrays fed whole, constants): quantize "
            "such a model instead",
            code="unsupported_input_binding",
        )


def training_data(
    model_path: Path,
    train_arrays: Mapping[str, np.ndarray],
    inputs: list[TensorInfo],
    task: TaskSpec,
    output_name: str,
    ctx: RunContext,
) -> TrainingData:
    """The feeds and loss targets: labels for a classification task whose training data
    has them, else the original model's outputs on the training data (ONNX Runtime)."""
    feeds = model_feeds(train_arrays, inputs, task)
    labels = train_arrays.get(task.labels)
    if task.kind == "classification" and labels is not None:
        if np.dtype(labels.dtype).kind not in "iu":
            raise IncompatibleData(
                f"classification labels {task.labels!r} must be integer class indices, "
                f"got {labels.dtype}"
            )
        return TrainingData(feeds, labels.reshape(-1).astype(np.int64), "cross_entropy")
    session = open_session(model_path, ctx.measure, ctx.device)
    outputs = compute_outputs(
        session, feeds, output_name, eval_batch_size(inputs), ctx.check_cancelled
    )
    loss: LossName = "kl_divergence" if task.kind == "classification" else "mse"
    return TrainingData(feeds, outputs.astype(np.float32), loss)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The job's eval data and what the step's metric compares against, per epoch."""

    feeds: Feeds
    task: TaskSpec
    labels: np.ndarray | None
    reference: np.ndarray
    metric_name: str

    @classmethod
    def of(cls, model_path: Path, data: StepData, output_name: str, ctx: RunContext) -> Evaluation:
        feeds = data.eval_feeds()
        labels = data.eval_arrays.get(data.task.labels) if data.task.kind != "embedding" else None
        reference = data.reference_outputs
        if reference is None:  # a step called outside the pipeline: run the original once
            session = open_session(model_path, ctx.measure, ctx.device)
            reference = compute_outputs(
                session, feeds, output_name, eval_batch_size(data.inputs), ctx.check_cancelled
            )
        metric_name, _ = score(data.task, reference, labels, reference)
        return cls(feeds, data.task, labels, reference, metric_name)

    def metric(self, outputs: np.ndarray) -> float:
        return score(self.task, outputs, self.labels, self.reference)[1]


def batches(shuffle: np.random.Generator, samples: int, batch_size: int) -> Iterator[np.ndarray]:
    """Shuffled row indices, `batch_size` per batch: the last batch is filled up from
    the start of the order, so a model that pins its batch size gets exactly that many
    rows (and BatchNorm in training never sees a batch of one)."""
    order = shuffle.permutation(samples)
    for start in range(0, samples, batch_size):
        yield order[np.arange(start, start + batch_size) % samples]


def tensors(
    feeds: Feeds, rows: np.ndarray | slice, inputs: list[TensorInfo], device: torch.device
) -> list[torch.Tensor]:
    import torch

    return [
        torch.from_numpy(np.ascontiguousarray(feeds[tensor.name][rows])).to(device)
        for tensor in inputs
    ]


def select_output(outputs: Any, index: int) -> torch.Tensor:
    return outputs[index] if isinstance(outputs, tuple | list) else outputs


def loss_of(name: LossName, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from torch.nn import functional

    if name == "cross_entropy":
        return functional.cross_entropy(outputs.reshape(len(outputs), -1), targets)
    if name == "kl_divergence":
        student = functional.log_softmax(outputs.reshape(len(outputs), -1), dim=1)
        teacher = functional.softmax(targets.reshape(len(targets), -1), dim=1)
        return functional.kl_div(student, teacher, reduction="batchmean")
    return functional.mse_loss(outputs, targets.reshape(outputs.shape))


def predict(
    module: fx.GraphModule,
    feeds: Feeds,
    batch_size: int,
    output_index: int,
    inputs: list[TensorInfo],
    device: torch.device,
) -> np.ndarray:
    """The module's chosen output over all of `feeds`, in batches (the last padded)."""
    import torch

    samples = sample_count(feeds)
    chunks = []
    with torch.no_grad():
        for start in range(0, samples, batch_size):
            rows = np.arange(start, start + batch_size) % samples
            outputs = select_output(module(*tensors(feeds, rows, inputs, device)), output_index)
            chunks.append(outputs.cpu().numpy()[: min(batch_size, samples - start)])
    return np.concatenate(chunks, axis=0)


# --- the one training loop ------------------------------------------------------------------

# (batch inputs, the module's output, the batch's row indices) -> loss
LossFn = Callable[[list["torch.Tensor"], "torch.Tensor", np.ndarray], "torch.Tensor"]
# the metric of the module on the eval data; higher is better (as every judged metric is)
EvaluateFn = Callable[["nn.Module"], float]
# called after optimizer step `step` (1, 2, ...): schedules act here, masks are re-applied
StepHook = Callable[[int], None]
ModeHook = Callable[["nn.Module"], None]

# Cancellation is checked every this many batches (and at every epoch's end).
CANCEL_CHECK_BATCHES = 20
# SGD's momentum: plain SGD without it trains far slower at the same learning rate.
SGD_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Literal["adam", "adamw", "sgd"]
    weight_decay: float
    # epochs without a better eval metric before stopping; None: every epoch runs
    patience: int | None
    seed: int


@dataclasses.dataclass
class TrainingRun:
    """What a run did. With `keep_best`, epoch 0 is the module as it started (a module
    training cannot improve is kept as it was) and the best epoch's weights are kept."""

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("-inf")
    stopped_early: bool = False
    training_s: float = 0.0


def fit(
    module: nn.Module,
    loss_fn: LossFn,
    feeds: Feeds,
    inputs: list[TensorInfo],
    output_index: int,
    evaluate: EvaluateFn,
    plan: TrainingPlan,
    ctx: RunContext,
    *,
    label: str = "training",
    progress: tuple[float, float] = (0.0, 1.0),
    extra_parameters: Iterable[torch.nn.Parameter] = (),
    keep_best: bool = True,
    on_step: StepHook | None = None,
    train_mode: ModeHook | None = None,
    eval_mode: ModeHook | None = None,
    report: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Train `module` in place for up to plan.epochs: every step that trains does it here
    (distillation and search trials, pruning's fine-tuning, quantization-aware training),
    so cancellation, divergence and reporting are one code.

    Seeded by plan.seed, on ctx.device; `inputs` name the feeds in the order the module
    takes them. Every epoch is evaluated and reported through ctx.report_step within
    `progress` (loss, eval metric, best epoch, plus `report`'s fields). With `keep_best`
    the module ends holding the best epoch's weights (ties: the later epoch; epoch 0 is
    the module as it came) and `plan.patience` stops early; without it the last epoch's
    weights stay. `on_step(step)` runs after every optimizer step (pruning's masks and
    schedules); `train_mode` / `eval_mode` replace module.train() / module.eval() (QAT's
    observers). Raises StepFailed when the loss is not finite, naming the learning rate.
    """
    import torch

    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    device = torch.device(ctx.device)
    module.to(device)
    to_train = train_mode or (lambda m: m.train())
    to_eval = eval_mode or (lambda m: m.eval())
    optimizer = optimizer_for([*module.parameters(), *extra_parameters], plan)
    shuffle = np.random.default_rng(plan.seed)
    samples = sample_count(feeds)
    run = TrainingRun()
    best_state = snapshot(module) if keep_best else None
    if keep_best:
        to_eval(module)
        run.best_metric = evaluate(module)
        run.history.append({"epoch": 0, "train_loss": None, "eval_metric": run.best_metric})
    stale_epochs = 0
    step = 0
    for epoch in range(1, plan.epochs + 1):
        to_train(module)
        losses = []
        for batch, rows in enumerate(batches(shuffle, samples, plan.batch_size)):
            if batch % CANCEL_CHECK_BATCHES == 0:
                ctx.check_cancelled()
            batch_inputs = tensors(feeds, rows, inputs, device)
            optimizer.zero_grad()
            outputs = select_output(module(*batch_inputs), output_index)
            loss = loss_fn(batch_inputs, outputs, rows)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)
            losses.append(float(loss.detach()))
        ctx.check_cancelled()
        train_loss = float(np.mean(losses))
        if not np.isfinite(train_loss):
            raise StepFailed(
                f"{label} diverged in epoch {epoch} (loss {train_loss}): lower "
                f"learning_rate (now {plan.learning_rate})"
            )
        to_eval(module)
        eval_metric = evaluate(module)
        if keep_best:
            # A tie keeps the later, longer-trained weights (a small eval set's accuracy
            # saturates early) but does not reset the patience: only gains do.
            stale_epochs = 0 if eval_metric > run.best_metric else stale_epochs + 1
            if eval_metric >= run.best_metric:
                run.best_metric, run.best_epoch = eval_metric, epoch
                best_state = snapshot(module)
        else:
            run.best_metric, run.best_epoch = eval_metric, epoch
        run.history.append({"epoch": epoch, "train_loss": train_loss, "eval_metric": eval_metric})
        start, end = progress
        ctx.report_step(
            start + (end - start) * epoch / max(plan.epochs, 1),
            f"{label} epoch {epoch}/{plan.epochs}",
            phase=label,
            epoch=epoch,
            loss=train_loss,
            eval_metric=eval_metric,
            best_epoch=run.best_epoch,
            **dict(report or {}),
        )
        if keep_best and plan.patience is not None and stale_epochs >= plan.patience:
            run.stopped_early = epoch < plan.epochs
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    to_eval(module)
    run.training_s = time.perf_counter() - started
    return run


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (a device copy would double GPU memory)."""
    return {
        name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()
    }


def optimizer_for(
    parameters: list[torch.nn.Parameter], plan: TrainingPlan
) -> torch.optim.Optimizer:
    import torch

    if plan.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=plan.learning_rate, momentum=SGD_MOMENTUM, weight_decay=plan.weight_decay
        )
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=plan.learning_rate, weight_decay=plan.weight_decay)
    return torch.optim.Adam(parameters, lr=plan.learning_rate, weight_decay=plan.weight_decay)
