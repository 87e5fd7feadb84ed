"""Measuring a candidate model file on this worker against the step's input: the task
metric against the job's original, the size, and the latency at every deployment batch
size by the verdict's own timing code. The measurer the tuners (quantize auto, the recipe)
are given unless a test injects its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.context import RunContext
from core.data import Feeds, model_feeds
from core.errors import StepFailed
from core.measure import (
    compare_to_original,
    compare_under_sessions,
    compute_outputs,
    eval_batch_size,
    file_size,
    latency_batch_sizes,
    open_session,
    score,
    session_inputs,
)
from core.registry import StepData
from core.timing import SpeedComparison
from core.tune.judge import Measurement


class WorkerMeasure:
    """Measures a model file against the step's input on this worker: its metric vs the
    job's original (reference outputs and scoring as the pipeline does) on the step's
    eval rows (in a job: the selection rows of the job's split), its size, and its
    latency at every deployment batch size, timed interleaved with the input and a
    second session of it by the verdict's own code (core.measure.compare_to_original;
    under the ONNX Runtime deployment targets' sessions, `StepData.timing_sessions`,
    when the job names any: core.measure.compare_under_sessions)."""

    def __init__(self, input_path: Path, data: StepData, ctx: RunContext) -> None:
        self._input_path = input_path
        self._data = data
        self._ctx = ctx
        self._feeds: Feeds = model_feeds(data.eval_arrays, data.inputs, data.task)
        self._batch_sizes = latency_batch_sizes(
            data.inputs, data.deployment_batch_sizes(), data.task
        )
        task = data.task
        labels = data.eval_arrays.get(task.labels) if task.kind != "embedding" else None
        self._labels = None if labels is None else np.asarray(labels)
        self._reference = data.reference_outputs

    def __call__(self, path: Path) -> Measurement:
        metric_name, metric_value = self.metric(path)
        return Measurement(
            file_size(path),
            metric_name,
            metric_value,
            self.latency(path),
            reference_metric=self.reference_metric(),
        )

    def reference_metric(self) -> float:
        """The original model's metric on these rows (its outputs against themselves)."""
        if self._reference is None:
            self._reference = self._outputs(self._input_path)
        return score(self._data.task, self._reference, self._labels, self._reference)[1]

    def latency(self, path: Path) -> tuple[SpeedComparison, ...]:
        """Latency at each deployment batch size against the input's; under each of the
        ONNX Runtime deployment targets' sessions when the job has any (then a candidate
        slower at any thread count the model is deployed with is judged slower)."""
        if self._data.timing_sessions:
            (comparisons,) = compare_under_sessions(
                self._input_path,
                [path],
                self._feeds,
                self._batch_sizes,
                self._data.timing_sessions,
                self._ctx.measure,
                check_cancelled=self._ctx.check_cancelled,
                layout=self._data.eval_layout,
            )
            return tuple(comparisons)
        (comparisons,) = compare_to_original(
            self._input_path,
            [path],
            self._feeds,
            self._batch_sizes,
            self._ctx.measure,
            self._ctx.device,
            check_cancelled=self._ctx.check_cancelled,
            layout=self._data.eval_layout,
        )
        return tuple(comparisons)

    def metric(self, path: Path) -> tuple[str, float]:
        """The task metric on these eval rows, against the original's outputs."""
        outputs = self._outputs(path)
        if self._reference is None:  # called outside a pipeline: the input is the reference
            self._reference = (
                outputs if path == self._input_path else self._outputs(self._input_path)
            )
        if outputs.shape != self._reference.shape:
            raise StepFailed(
                f"{path.name} has an output of shape {outputs.shape}, the original's is "
                f"{self._reference.shape}"
            )
        return score(self._data.task, outputs, self._labels, self._reference)

    def _outputs(self, path: Path) -> np.ndarray:
        session = open_session(path, self._ctx.measure, self._ctx.device)
        task = self._data.task
        output_name = task.metric_output([meta.name for meta in session.get_outputs()])
        outputs = compute_outputs(
            session,
            self._feeds,
            output_name,
            eval_batch_size(session_inputs(session), task),
            self._ctx.check_cancelled,
            layout=self._data.eval_layout,
            sample_axis=task.output_sample_axis,
        )
        if outputs.dtype.kind == "f" and not np.all(np.isfinite(outputs)):
            raise StepFailed(f"{path.name} produced non-finite values on the eval data")
        return outputs
