"""Steps by method name: what a step receives, what it returns, and how it is found.

A step is a function `(model_path, config, data, ctx) -> StepOutput` registered under its
spec's `method`. Adding a method means adding its module (registered with
`@register_step`), naming the module in `_STEP_MODULES`, and its config in core.spec.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.context import RunContext
from core.data import FeedLayout, Feeds, feed_layout, model_feeds
from core.errors import EngineError, IncompatibleData
from core.formats import TensorInfo
from core.results import ModelMetrics
from core.runtimes.settings import RunSettings
from core.spec import Targets, TaskSpec

# Modules that register built-in steps; imported on first lookup so that importing the
# registry alone (as the steps themselves do) creates no import cycle.
_STEP_MODULES = ("core.quantize", "core.prune", "core.distill", "core.search", "core.recipe")


@dataclass(frozen=True)
class StepData:
    """The data a step may use, as loaded arrays plus how they feed the model.

    In a job, `eval_arrays` are the selection rows of the job's eval split (every choice
    a step makes is made on them; core.evaluation), and `reference_outputs` and
    `original_metrics` are the original model's on those rows.
    """

    eval_arrays: Mapping[str, np.ndarray]
    calibration_arrays: Mapping[str, np.ndarray]
    inputs: list[TensorInfo]  # the model's graph inputs (names, dtypes, shapes)
    task: TaskSpec
    # Training data for steps that train (None when the job has none).
    train_arrays: Mapping[str, np.ndarray] | None = None
    # What the job asks of its final model; the batch size a step's own timing uses, and
    # every deployment batch size latency is judged at (empty: 1 and batch_size).
    targets: Targets = field(default_factory=Targets)
    batch_size: int = 1
    batch_sizes: tuple[int, ...] = ()
    # The job's original model on the eval data: its outputs (the reference for agreement
    # and similarity metrics) and its measured metrics. Tuning steps judge candidates
    # against the original, not against the step's input.
    reference_outputs: np.ndarray | None = None
    original_metrics: ModelMetrics | None = None
    # The job's original model (distillation's teacher, whatever steps ran before) and
    # the other uploaded models the spec names (uploaded students), by model id.
    original_model_path: Path | None = None
    models: Mapping[str, Path] = field(default_factory=dict)
    # The sessions the job's ONNX Runtime deployment targets run under (thread counts,
    # spinning as deployed): a tuning step times its candidates under each, so that what
    # it chooses is not slower where the model is deployed. Empty: the worker's
    # MeasureSettings (fixed threads, spinning off).
    timing_sessions: tuple[RunSettings, ...] = ()

    def deployment_batch_sizes(self) -> list[int]:
        return sorted(set(self.batch_sizes or (1, self.batch_size)))

    @cached_property
    def eval_layout(self) -> FeedLayout:
        """How a batch of `eval_feeds` becomes the model's feed (core.data.FeedLayout)."""
        return feed_layout(self.eval_arrays, self.inputs, self.task)

    def model_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of eval feeds as the model takes it."""
        return self.eval_layout.to_model(batch)

    def eval_feeds(self, rows: int | None = None) -> Feeds:
        """The eval data keyed by model input and cast to its dtype, samples on axis 0
        (the first `rows`)."""
        return _head(model_feeds(self.eval_arrays, self.inputs, self.task), rows)

    def calibration_feeds(self, rows: int | None = None) -> Feeds:
        return _head(model_feeds(self.calibration_arrays, self.inputs, self.task), rows)

    def require_train_arrays(self, method: str) -> Mapping[str, np.ndarray]:
        if self.train_arrays is None:
            raise IncompatibleData(f"{method} trains the model: the job needs train_dataset_id")
        return self.train_arrays


@dataclass(frozen=True)
class StepOutput:
    model_path: Path
    # Method-specific facts for the report (mode, op types, opset upgrade, warnings).
    details: dict[str, Any] = field(default_factory=dict)
    # Extra files for the job's artifacts, by the name a client downloads them under
    # (e.g. the search's pareto.json and pareto.png); the pipeline collects them.
    artifacts: dict[str, Path] = field(default_factory=dict)
    # Why the step left the model as it was (auto kept the input, no node was quantized,
    # no layer was pruned); None when it changed it. The verdict calls such a job
    # "unchanged", never "improved".
    unchanged_reason: str | None = None
    # The float model a quantized output was made from (the auto recipe's): deployment
    # targets that quantize in their own runtime (OpenVINO) start from it.
    float_model_path: Path | None = None


def _head(feeds: Feeds, rows: int | None) -> Feeds:
    return feeds if rows is None else {name: array[:rows] for name, array in feeds.items()}


StepFn = Callable[[Path, Any, StepData, RunContext], StepOutput]
F = TypeVar("F", bound=StepFn)

_STEPS: dict[str, StepFn] = {}


def register_step(method: str) -> Callable[[F], F]:
    """Register a step function under `method`; registering a name twice is a bug."""

    def decorator(function: F) -> F:
        if method in _STEPS and _STEPS[method] is not function:
            raise ValueError(f"step method {method!r} is already registered")
        _STEPS[method] = function
        return function

    return decorator


def get_step(method: str) -> StepFn:
    """The function registered for `method`; EngineError "unknown_method" when none is."""
    for module in _STEP_MODULES:
        importlib.import_module(module)
    try:
        return _STEPS[method]
    except KeyError:
        raise EngineError(
            f"no step is registered for method {method!r}; known: {sorted(_STEPS)}",
            code="unknown_method",
        ) from None
