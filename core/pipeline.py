"""Run a job: validate, measure the original, run each step and measure it, judge the targets.

Missed targets are a result, not an error: the verdict says which target was missed and
by how much. Errors are raised only when something cannot be run or measured.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from core.context import RunContext
from core.data import (
    DatasetInfo,
    Feeds,
    check_compatible,
    inspect_dataset,
    load_arrays,
    model_feeds,
    pinned_batch_size,
    take_rows,
)
from core.errors import EngineError, IncompatibleData, InvalidDataset, StepFailed, short_reason
from core.formats import ModelInfo, TensorInfo, copy_model, inspect_model, model_files
from core.manifest import build_manifest
from core.measure import (
    compare_latency,
    latency_at,
    latency_batch_sizes,
    measure_model_with_outputs,
)
from core.registry import StepData, StepOutput, get_step
from core.results import Latency, ModelMetrics, PipelineResult, StepResult, TargetCheck, Verdict
from core.spec import JobSpec, Step, Targets

# Datasets were capped at upload; this cap only guards a caller that skipped that check.
DEFAULT_MAX_DATASET_BYTES = 4 * 1024**3
FINAL_MODEL_NAME = "model.onnx"
# Steps' extra files (StepOutput.artifacts) are gathered here, under ctx.work_dir, for
# the caller to publish beside the final model.
STEP_ARTIFACTS_DIR = "artifacts"
# Names the caller publishes itself; a step's file may not take them.
RESERVED_ARTIFACT_NAMES = frozenset({"model.onnx", "model.zip", "report.json", "manifest.json"})
TargetName = Literal["max_metric_drop", "max_latency_ms", "max_size_bytes", "not_slower"]

# Progress milestones over the whole job (0..1).
_MEASURE_ORIGINAL = (0.05, 0.15)
_STEPS_END = 0.95
# "not slower": the final/original latency ratio at the job's batch size may not exceed
# this (timing noise of two interleaved measurements on a busy CPU stays within it).
NOT_SLOWER_TOLERANCE = 1.05
_TINY = 1e-12
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def resolve_device(requested: str) -> str:
    """ "auto" -> "cuda" when ONNX Runtime offers CUDA, else "cpu"; "cuda" must be available.

    Raises EngineError with code "device_unavailable" when CUDA is asked for and absent.
    """
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if requested == "cuda" and not has_cuda:
        raise EngineError(
            "the job asks for device 'cuda' but ONNX Runtime here has no CUDA provider "
            f"(available: {available}); use device 'cpu' or 'auto'",
            code="device_unavailable",
        )
    if requested not in ("cpu", "cuda"):
        raise EngineError(f"unknown device {requested!r}", code="device_unavailable")
    return requested


def run(
    model_path: Path,
    datasets: dict[str, Path],
    spec: JobSpec,
    ctx: RunContext,
    *,
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
    models: Mapping[str, Path] | None = None,
) -> tuple[PipelineResult, Path]:
    """Run `spec` on the model; return the measured result and the final model's path.

    `datasets` maps dataset ids (spec.eval_dataset_id, spec.calibration_dataset_id) to
    .npz files; `models` maps the ids of the other models the spec names (uploaded
    students: `spec.student_model_ids()`) to their .onnx files. Everything is
    written under ctx.work_dir; the final model is ctx.work_dir / "model.onnx". Raises
    JobCancelled when ctx.is_cancelled turns true.
    """
    device = resolve_device(ctx.device)
    ctx = dataclasses.replace(ctx, device=device)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.report(0.0, "validating the model and data")

    model_info = inspect_model(model_path)
    eval_path = _dataset_path(datasets, spec.eval_dataset_id)
    calibration_path = (
        _dataset_path(datasets, spec.calibration_dataset_id)
        if spec.calibration_dataset_id
        else eval_path
    )
    train_path = _dataset_path(datasets, spec.train_dataset_id) if spec.train_dataset_id else None
    for path in dict.fromkeys(p for p in (eval_path, calibration_path, train_path) if p):
        _check_dataset(model_info, path, spec, max_dataset_bytes)
    _check_batch_size(model_info, spec.batch_size)

    # External data files are part of the model's bytes: each one is hashed too.
    model_file_paths = model_files(model_path)
    manifest_inputs = (
        {"model": model_path}
        | {f"model:{path.relative_to(model_path.parent)}": path for path in model_file_paths[1:]}
        | {dataset_id: _dataset_path(datasets, dataset_id) for dataset_id in spec.dataset_ids()}
        | dict(models or {})
    )
    manifest = build_manifest(manifest_inputs, spec, device)
    eval_arrays = load_arrays(eval_path)
    calibration_arrays = (
        eval_arrays if calibration_path == eval_path else load_arrays(calibration_path)
    )
    train_arrays = load_arrays(train_path) if train_path is not None else None

    ctx.report(_MEASURE_ORIGINAL[0], "measuring the original model")
    # The original's outputs are computed once and are the reference for every later model.
    original, reference_outputs = measure_model_with_outputs(
        model_path,
        eval_arrays,
        spec.task,
        spec.batch_size,
        ctx.measure,
        device,
        check_cancelled=ctx.check_cancelled,
    )
    ctx.report(_MEASURE_ORIGINAL[1], "measured the original model", metrics=original.model_dump())

    data = StepData(
        eval_arrays,
        calibration_arrays,
        model_info.inputs,
        spec.task,
        train_arrays=train_arrays,
        targets=spec.targets,
        batch_size=spec.batch_size,
        reference_outputs=reference_outputs,
        original_metrics=original,
        original_model_path=model_path,
        models=dict(models or {}),
    )
    span = (_STEPS_END - _MEASURE_ORIGINAL[1]) / len(spec.steps)
    current_path = model_path
    step_results: list[StepResult] = []
    for index, step in enumerate(spec.steps):
        progress = _MEASURE_ORIGINAL[1] + index * span
        label = f"step {index + 1}/{len(spec.steps)} ({step.method})"
        ctx.report(progress, f"{label}: running", step=index, method=step.method)
        step_ctx = dataclasses.replace(
            ctx,
            work_dir=ctx.work_dir / "steps" / f"{index:02d}-{step.method}",
            progress_span=(progress, progress + 0.6 * span),
        )
        started = time.perf_counter()
        output = _run_step(index, step, current_path, data, step_ctx)
        duration_s = time.perf_counter() - started

        ctx.report(progress + 0.6 * span, f"{label}: measuring", step=index, method=step.method)
        metrics, _ = measure_model_with_outputs(
            output.model_path,
            eval_arrays,
            spec.task,
            spec.batch_size,
            ctx.measure,
            device,
            reference_outputs=reference_outputs,
            check_cancelled=ctx.check_cancelled,
        )
        metrics.metric_change = metrics.metric_value - original.metric_value
        step_results.append(
            StepResult(
                index=index,
                method=step.method,
                metrics=metrics,
                duration_s=duration_s,
                details=output.details,
            )
        )
        ctx.report(
            progress + span,
            f"{label}: done",
            step=index,
            method=step.method,
            metrics=metrics.model_dump(),
            details=output.details,
        )
        current_path = output.model_path
        _collect_artifacts(index, output, ctx.work_dir / STEP_ARTIFACTS_DIR)

    final_path = ctx.work_dir / FINAL_MODEL_NAME
    copy_model(current_path, final_path)

    ctx.report(_STEPS_END, "comparing the original and final latency")
    original, final = _compare_latency(
        model_path,
        final_path,
        original,
        step_results[-1].metrics,
        model_feeds(eval_arrays, model_info.inputs, spec.task),
        model_info.inputs,
        spec,
        ctx,
    )
    verdict = compute_verdict(original, final, spec.targets, spec.batch_size)
    result = PipelineResult(
        original=original, steps=step_results, final=final, verdict=verdict, manifest=manifest
    )
    ctx.report(1.0, "done", targets_met=verdict.targets_met)
    return result, final_path


def compute_verdict(
    original: ModelMetrics, final: ModelMetrics, targets: Targets, batch_size: int
) -> Verdict:
    """Check each target that is set against the measured values of the final model."""
    checks: list[TargetCheck] = []
    metric_change = final.metric_value - original.metric_value
    if targets.max_metric_drop is not None:
        drop = -metric_change  # every metric is higher-is-better, neg_mse included
        if targets.metric_drop_mode == "relative":
            drop = _relative(drop, abs(original.metric_value))
        checks.append(_check("max_metric_drop", targets.max_metric_drop, drop))
    final_latency = latency_at(final, batch_size).median_ms
    if targets.max_latency_ms is not None:
        checks.append(_check("max_latency_ms", targets.max_latency_ms, final_latency))
    if targets.max_size_bytes is not None:
        checks.append(_check("max_size_bytes", targets.max_size_bytes, final.size_bytes))
    latency_ratio = _relative(final_latency, latency_at(original, batch_size).median_ms)
    if not targets.allow_slower:
        # Compression that makes the model slower is no success unless the user said so;
        # the tolerance absorbs timing noise of the interleaved comparison.
        checks.append(_check("not_slower", NOT_SLOWER_TOLERANCE, latency_ratio))
    return Verdict(
        targets_met=all(check.met for check in checks),
        checks=checks,
        size_ratio=final.size_bytes / original.size_bytes,
        latency_ratio=latency_ratio,
        metric_change=metric_change,
    )


def _check(target: TargetName, limit: float, measured: float) -> TargetCheck:
    return TargetCheck(
        target=target,
        limit=float(limit),
        measured=float(measured),
        met=measured <= limit,
    )


def _relative(value: float, base: float) -> float:
    # A zero base (e.g. a perfect neg_mse of 0) makes any worsening "infinitely" worse;
    # a huge finite number says so and, unlike inf, survives JSON.
    return value / max(abs(base), _TINY)


def _compare_latency(
    original_path: Path,
    final_path: Path,
    original: ModelMetrics,
    final: ModelMetrics,
    feeds: Feeds,
    inputs: list[TensorInfo],
    spec: JobSpec,
    ctx: RunContext,
) -> tuple[ModelMetrics, ModelMetrics]:
    """Re-time the original and final models interleaved (A, B, A, B ...) for the verdict.

    Timed minutes apart, machine noise alone can move a ratio; timed interleaved in one
    process, both see the same conditions. The step results keep their own timings.
    """
    original_latency: list[Latency] = []
    final_latency: list[Latency] = []
    for rows in latency_batch_sizes(inputs, spec.batch_size):
        ctx.check_cancelled()
        before, after = compare_latency(
            [original_path, final_path], take_rows(feeds, rows), rows, ctx.measure, ctx.device
        )
        original_latency.append(before)
        final_latency.append(after)
    return (
        original.model_copy(update={"latency": original_latency}),
        final.model_copy(update={"latency": final_latency}),
    )


def _run_step(
    index: int,
    step: Step,
    model_path: Path,
    data: StepData,
    ctx: RunContext,
) -> StepOutput:
    """Run one step; an unexpected exception becomes StepFailed naming the step."""
    try:
        return get_step(step.method)(model_path, step, data, ctx)
    except EngineError:
        raise
    except Exception as exc:
        raise StepFailed(f"step {index + 1} ({step.method}) failed: {short_reason(exc)}") from exc


def _collect_artifacts(index: int, output: StepOutput, folder: Path) -> None:
    """Copy a step's extra files into `folder` under their names; a name an earlier
    step took gets the prefix "step<N>-"."""
    for name, path in output.artifacts.items():
        if not _SAFE_NAME.fullmatch(name) or name in RESERVED_ARTIFACT_NAMES:
            raise StepFailed(f"step {index + 1} names an artifact {name!r} it may not use")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists():
            target = folder / f"step{index + 1}-{name}"
        shutil.copyfile(path, target)


def _dataset_path(datasets: dict[str, Path], dataset_id: str) -> Path:
    try:
        return datasets[dataset_id]
    except KeyError:
        raise InvalidDataset(
            f"dataset {dataset_id!r} was not provided to the engine", code="dataset_missing"
        ) from None


def _check_dataset(model: ModelInfo, path: Path, spec: JobSpec, max_bytes: int) -> DatasetInfo:
    info = inspect_dataset(path, max_bytes)
    check_compatible(model, info, spec.task)
    return info


def _check_batch_size(model: ModelInfo, batch_size: int) -> None:
    pinned = pinned_batch_size(model.inputs)
    if pinned is not None and pinned != batch_size:
        raise IncompatibleData(
            f"the model pins its batch dimension to {pinned}, so latency cannot be measured "
            f"at batch_size {batch_size}; set batch_size to {pinned} or export with a "
            "dynamic batch axis"
        )
