"""Run every method on the corpus's models and say, per (model, method), what happened:
it works (the output passes the ONNX checker, runs in ONNX Runtime on the eval data with
finite outputs of the original's names and shapes), or it is refused with a specific
error code, or it is pending (a job for the model cannot be written yet).

The steps are called as the pipeline calls them, with the data it would hand them
(the original's outputs and metrics on the eval rows) and small, fast settings.
Anything but an EngineError propagates: a crash is a failure of the corpus, never a row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import TypeAdapter

from core.context import MeasureSettings, RunContext
from core.errors import EngineError
from core.formats import inspect_model
from core.measure import measure_model_with_outputs
from core.registry import StepData, get_step
from core.spec import Step, TaskSpec
from tests.corpus.models import CORPUS, CorpusModel, arrays

FAST = MeasureSettings(threads=1, warmup_runs=0, runs=3)
CALIBRATION_ROWS = 64
_FINE_TUNE = {"epochs": 1, "batch_size": 64}
# Each method with small settings; names are the table's columns.
METHODS: dict[str, dict[str, Any]] = {
    "dynamic": {"method": "quantize", "mode": "dynamic"},
    "static": {
        "method": "quantize",
        "mode": "static",
        "calibration_samples": CALIBRATION_ROWS,
        "calibration_batch_size": 16,
    },
    "fp16": {"method": "quantize", "mode": "fp16"},
    "int4": {"method": "quantize", "mode": "int4"},
    "auto": {
        "method": "quantize",
        "mode": "auto",
        "calibration_samples": CALIBRATION_ROWS,
        "calibration_batch_size": 16,
        "max_fallback_trials": 4,
    },
    "qat": {"method": "quantize", "mode": "qat", "epochs": 1, "batch_size": 32},
    "prune_unstructured": {
        "method": "prune",
        "kind": "unstructured",
        "sparsity": 0.5,
        "fine_tune": _FINE_TUNE,
    },
    "prune_structured": {
        "method": "prune",
        "kind": "structured",
        "sparsity": 0.5,
        "fine_tune": _FINE_TUNE,
    },
    "prune_n_m": {"method": "prune", "kind": "n_m", "n": 2, "m": 4, "fine_tune": _FINE_TUNE},
    "distill_family": {
        "method": "distill",
        "student": {"source": "family", "family": "auto", "parameter_ratio": 0.5},
        "epochs": 1,
        "batch_size": 64,
    },
    "distill_step_input": {
        "method": "distill",
        "student": {"source": "step_input"},
        "epochs": 1,
        "batch_size": 64,
    },
}
QUANTIZE_MODES = ("dynamic", "static", "fp16", "int4", "auto", "qat")
PRUNE_KINDS = ("prune_unstructured", "prune_structured", "prune_n_m")
DISTILL_STUDENTS = ("distill_family", "distill_step_input")
# Codes that name no particular cause: a refusal must never carry one.
GENERIC_CODES = frozenset({"engine_error", "step_failed", "unsupported_model"})
_STEP = TypeAdapter(Step)

Status = Literal["works", "refused", "pending"]


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    status: Status
    code: str | None = None
    message: str | None = None
    seconds: float = 0.0
    unchanged: str | None = None  # works, but the step left the model as it was
    # classification: the share of eval rows whose top class is the original's
    agreement: float | None = None

    def short(self) -> str:
        """The table's cell."""
        if self.status == "works":
            return "works (unchanged)" if self.unchanged else "works"
        if self.status == "pending":
            return "pending"
        return f"refused: `{self.code}`"


@dataclass(frozen=True)
class Prepared:
    """A built model and the data a job would give its steps."""

    spec: CorpusModel
    path: Path
    data: StepData


class Corpus:
    """Builds each model once, on first use, and runs each (model, method) once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._prepared: dict[str, Prepared] = {}
        self._cells: dict[tuple[str, str], Cell] = {}

    def model(self, name: str) -> Prepared:
        if name not in self._prepared:
            spec = CORPUS[name]
            path = spec.build(self.folder / "models" / f"{name.replace('@', '_')}.onnx")
            self._prepared[name] = Prepared(spec, path, _step_data(spec, path))
        return self._prepared[name]

    def cell(self, name: str, method: str) -> Cell:
        if (name, method) not in self._cells:
            self._cells[(name, method)] = self._run(name, method)
        return self._cells[(name, method)]

    def _run(self, name: str, method: str) -> Cell:
        spec = CORPUS[name]
        if spec.pending:
            return Cell(name, method, "pending", message=spec.pending)
        model = self.model(name)
        step = _STEP.validate_python(METHODS[method])
        work_dir = self.folder / "runs" / f"{name.replace('@', '_')}-{method}"
        ctx = RunContext(work_dir=work_dir, measure=FAST)
        started = time.perf_counter()
        try:
            output = get_step(step.method)(model.path, step, model.data, ctx)
        except EngineError as error:
            return Cell(
                name, method, "refused", error.code, error.message, time.perf_counter() - started
            )
        seconds = time.perf_counter() - started
        agreement = check_output(model, output.model_path)
        return Cell(
            name,
            method,
            "works",
            seconds=seconds,
            unchanged=output.unchanged_reason,
            agreement=agreement,
        )


def _step_data(spec: CorpusModel, path: Path) -> StepData:
    """What the pipeline hands a step: the eval rows, calibration and training data, and
    the original's outputs and metric on the eval rows."""
    task = TaskSpec(**spec.task)
    if spec.pending:
        return StepData({}, {}, inspect_model(path).inputs, task)
    eval_arrays = arrays(spec.inputs, "test", spec.eval_rows)
    original, outputs = measure_model_with_outputs(path, eval_arrays, task, [1], FAST, "cpu")
    return StepData(
        eval_arrays=eval_arrays,
        calibration_arrays=arrays(spec.inputs, "train", CALIBRATION_ROWS),
        inputs=inspect_model(path).inputs,
        task=task,
        train_arrays=arrays(spec.inputs, "train", spec.train_rows),
        reference_outputs=outputs,
        original_metrics=original,
        original_model_path=path,
    )


def check_output(model: Prepared, path: Path) -> float | None:
    """The step's output is a model a user can run: it passes the checker, loads in ONNX
    Runtime and gives finite outputs of the original's names and shapes on the eval
    rows. Returns, for classification, the share of rows whose top class is the
    original's (on the output the task reads)."""
    onnx.checker.check_model(str(path))
    feeds = model.data.eval_feeds()
    expected = _run_model(model.path, feeds, _rows(model))
    actual = _run_model(path, feeds, _rows(model))
    assert list(actual) == list(expected), f"outputs {list(actual)} != {list(expected)}"
    for name, value in actual.items():
        assert value.shape == expected[name].shape, f"{name}: {value.shape}"
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), f"{name} is not finite"
    task = model.data.task
    if task.kind != "classification":
        return None
    output = task.output or next(iter(actual))
    same = actual[output].argmax(axis=-1) == expected[output].argmax(axis=-1)
    return float(np.mean(same))


def _rows(model: Prepared) -> int:
    """The batch size to run at: the pinned one, else all the rows at once."""
    pinned = [t.shape[0] for t in model.data.inputs if t.shape and isinstance(t.shape[0], int)]
    return pinned[0] if pinned else len(next(iter(model.data.eval_arrays.values())))


def _run_model(path: Path, feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    rows = len(next(iter(feeds.values())))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, rows, batch):
        batch_feeds = {n: v[start : start + batch] for n, v in feeds.items() if n in wanted}
        for part, value in zip(parts, session.run(names, batch_feeds), strict=True):
            part.append(np.asarray(value))
    return {name: np.concatenate(part) for name, part in zip(names, parts, strict=True)}
