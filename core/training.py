"""Training on the job's data, shared by the steps that train (QAT, pruning's fine-tuning;
distillation next): feeds and loss targets, the task loss, batching, prediction, and
per-epoch evaluation against the job's original.

torch is imported inside the functions: only jobs that train pay for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds, sample_count
from core.errors import IncompatibleData
from core.formats import TensorInfo
from core.measure import compute_outputs, eval_batch_size, open_session, score
from core.registry import StepData
from core.spec import TaskSpec

if TYPE_CHECKING:
    import torch
    from torch import fx

LossName = Literal["cross_entropy", "kl_divergence", "mse"]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What the model is fine-tuned on: its input feeds and the targets of its loss."""

    feeds: Feeds
    targets: np.ndarray  # class indices (cross_entropy) or the original's outputs
    loss: LossName


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
