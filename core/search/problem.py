"""What a search trains on and how it scores a trial, prepared once per runner.

The job's training rows are split (seeded, so every worker draws the same split) into
rows trials train on and validation rows they are scored on; the job's eval data then
scores only the chosen model, so its reported metric is not inflated by the choice.
The job's original model runs once over the training rows (ONNX Runtime, cached): its
outputs are the soft targets of teacher-guided trials and the reference of metrics that
compare against the original (agreement, cosine similarity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds, pinned_batch_size, select_rows
from core.distill.teacher import as_logits, teacher_outputs
from core.errors import IncompatibleData, InputError
from core.families import FAMILIES, FamilyConfig, SearchRange, family_for
from core.formats import TensorInfo, inspect_model
from core.measure import score
from core.registry import StepData
from core.search.space import narrow
from core.spec import SearchStep, TaskSpec
from core.training import Evaluation

if TYPE_CHECKING:
    from torch import nn

INVALID_SEARCH = "invalid_search"


@dataclass(frozen=True)
class Validation:
    """The rows a trial is scored on, and against what."""

    feeds: Feeds
    labels: np.ndarray | None
    reference: np.ndarray  # the original model's outputs on these rows
    task: TaskSpec
    metric_name: str
    source: str  # for the report

    def metric(self, outputs: np.ndarray) -> float:
        return score(self.task, outputs, self.labels, self.reference)[1]


@dataclass(frozen=True)
class SearchProblem:
    family: type[FamilyConfig]
    family_chosen_by: str
    space: dict[str, SearchRange]
    original: Path
    input: TensorInfo
    output: TensorInfo
    input_shape: tuple[int, ...]  # one sample, no batch dim
    output_shape: tuple[int, ...]
    opset: int
    feeds: Feeds  # the rows trials train on
    labels: np.ndarray | None  # their labels (class indices or regression targets)
    teacher_targets: np.ndarray  # the original's outputs on them (logits for classes)
    validation: Validation
    task: TaskSpec
    latency_feeds: Feeds  # `latency_batch_size` rows
    latency_batch_size: int

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    def build(self, config: FamilyConfig) -> nn.Module:
        """The family's module for this problem's input and output shapes."""
        from torch import nn

        from core.families import build

        module = build(config, self.input_shape, self.num_outputs)
        if len(self.output_shape) != 1:
            module = nn.Sequential(module, nn.Unflatten(1, self.output_shape))
        return module


def prepare(config: SearchStep, data: StepData, original: Path, ctx: RunContext) -> SearchProblem:
    """The problem of `config` on the job's data; `original` is the job's uploaded model.

    Raises InputError (code "invalid_search") when the model's inputs do not suit the
    families (one float input) and IncompatibleData when the training data has neither
    labels nor a teacher to learn from.
    """
    info = inspect_model(original)
    if len(info.inputs) != 1 or np.dtype(info.inputs[0].dtype).kind != "f":
        raise InputError(
            "the search builds models of one float input; the uploaded model takes "
            + ", ".join(f"{t.name} ({t.dtype})" for t in info.inputs),
            code=INVALID_SEARCH,
        )
    output_name = data.task.output or info.outputs[0].name
    output = next(tensor for tensor in info.outputs if tensor.name == output_name)
    train_arrays = data.require_train_arrays("search")
    all_feeds = model_feeds(train_arrays, info.inputs, data.task)
    tensor = info.inputs[0]
    input_shape = tuple(int(size) for size in all_feeds[tensor.name].shape[1:])

    ctx.report_step(0.0, "search: the original model's outputs on the training data")
    cached = teacher_outputs(
        original,
        all_feeds,
        output_name,
        info.inputs,
        ctx.work_dir / "teacher",
        ctx.measure,
        ctx.device,
        ctx.check_cancelled,
    )
    classification = data.task.kind == "classification"
    targets = as_logits(cached.outputs)[0] if classification else cached.outputs
    all_labels = _labels(train_arrays, data.task, cached.outputs.shape[1:])
    if all_labels is None and not config.teacher:
        raise IncompatibleData(
            f"the training data has no label array {data.task.labels!r}: add labels, or set "
            "teacher to true to train the trials against the original model's outputs"
        )

    train_rows, validation_rows = split_rows(
        len(cached.outputs), config.validation_fraction, _seed(config, ctx)
    )
    if validation_rows is None:
        evaluation = Evaluation.of(original, data, output_name, ctx)
        validation = Validation(
            evaluation.feeds,
            evaluation.labels,
            evaluation.reference,
            data.task,
            evaluation.metric_name,
            "the job's eval data (validation_fraction 0: it also scores the result)",
        )
    else:
        rows_labels = all_labels[validation_rows] if all_labels is not None else None
        if data.task.kind == "embedding":
            rows_labels = None
        reference = cached.outputs[validation_rows]
        metric_name, _ = score(data.task, reference, rows_labels, reference)
        validation = Validation(
            select_rows(all_feeds, validation_rows),
            rows_labels,
            reference,
            data.task,
            metric_name,
            f"{len(validation_rows)} training rows held out from training",
        )

    family, chosen_by = _family(config, input_shape)
    latency_batch_size = pinned_batch_size(info.inputs) or data.batch_size
    latency_rows = np.arange(latency_batch_size) % len(train_rows)
    return SearchProblem(
        family=family,
        family_chosen_by=chosen_by,
        space=narrow(family, config.space),
        original=original,
        input=tensor,
        output=output,
        input_shape=input_shape,
        output_shape=tuple(int(size) for size in cached.outputs.shape[1:]),
        opset=info.opset,
        feeds=select_rows(all_feeds, train_rows),
        labels=all_labels[train_rows] if all_labels is not None else None,
        teacher_targets=np.ascontiguousarray(targets[train_rows]),
        validation=validation,
        task=data.task,
        latency_feeds=select_rows(all_feeds, train_rows[latency_rows]),
        latency_batch_size=latency_batch_size,
    )


def split_rows(samples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Training and validation row indices: a seeded shuffle, `fraction` held out (at
    least one row, and at least one left to train on); no validation rows for 0."""
    order = np.random.default_rng(seed).permutation(samples)
    if fraction == 0.0:
        return np.sort(order), None
    if samples < 2:
        raise IncompatibleData("the search needs at least 2 training rows to hold some out")
    held_out = min(max(1, round(samples * fraction)), samples - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _seed(config: SearchStep, ctx: RunContext) -> int:
    return ctx.seed if config.seed is None else config.seed


def _family(config: SearchStep, input_shape: tuple[int, ...]) -> tuple[type[FamilyConfig], str]:
    if config.family != "auto":
        family = FAMILIES[config.family]
        if family is not FAMILIES["mlp"] and len(input_shape) != _RANKS[config.family]:
            raise InputError(
                f"the {config.family} family takes inputs of rank {_RANKS[config.family]} "
                f"per sample, the training data's are {list(input_shape)}",
                code=INVALID_SEARCH,
            )
        return family, "spec"
    return FAMILIES[family_for(input_shape)], "input rank"


_RANKS = {"cnn": 3, "transformer": 2}


def _labels(
    arrays: Mapping[str, np.ndarray], task: TaskSpec, output_shape: tuple[int, ...]
) -> np.ndarray | None:
    """Class indices (classification) or targets of the output's shape (regression);
    None when absent and for embeddings."""
    labels = arrays.get(task.labels) if task.kind != "embedding" else None
    if labels is None:
        return None
    if task.kind == "classification":
        if np.dtype(labels.dtype).kind not in "iu":
            raise IncompatibleData(
                f"classification labels {task.labels!r} must be integer class indices, "
                f"got {labels.dtype}"
            )
        return np.ascontiguousarray(labels.reshape(-1), dtype=np.int64)
    per_sample = math.prod(output_shape)
    if labels.size != len(labels) * per_sample:
        raise IncompatibleData(
            f"regression labels {task.labels!r} of shape {labels.shape} do not match the "
            f"output's shape {list(output_shape)} per sample"
        )
    return np.ascontiguousarray(labels.reshape(len(labels), *output_shape), dtype=np.float32)
