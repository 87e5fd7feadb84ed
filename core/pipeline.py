"""Run a job: validate, measure the original, run each step and measure it, judge the targets.

Missed targets are a result, not an error: the verdict says which target was missed and
by how much. Errors are raised only when something cannot be run or measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.context import RunContext
from core.data import (
    DatasetInfo,
    FeedLayout,
    Feeds,
    check_compatible,
    feed_layout,
    inspect_dataset,
    load_arrays,
    model_feeds,
    pinned_batch_size,
    sample_count,
)
from core.deployment import TargetInputs, run_targets
from core.errors import EngineError, IncompatibleData, InvalidDataset, StepFailed, short_reason
from core.evaluation import EvalSplit, rows_of, split_eval_rows
from core.formats import ModelInfo, copy_model, files_digest, inspect_model, model_files
from core.manifest import build_manifest
from core.measure import (
    OutputSnapshot,
    capture_other_outputs,
    compare_other_outputs,
    compare_to_original,
    eval_batch_size,
    measure_model_with_outputs,
    score,
)
from core.metrics import judged_metric
from core.registry import StepData, StepOutput, get_step
from core.results import (
    EvaluationRecord,
    Latency,
    ModelMetrics,
    Note,
    PipelineResult,
    StepResult,
)
from core.runtimes.settings import RunSettings
from core.spec import JobSpec, Step, TaskSpec
from core.timing import MIN_TOLERANCE, SpeedComparison
from core.verdict import compute_verdict, metric_checks

# Datasets were capped at upload; this cap only guards a caller that skipped that check.
DEFAULT_MAX_DATASET_BYTES = 4 * 1024**3
FINAL_MODEL_NAME = "model.onnx"
# Steps' extra files (StepOutput.artifacts) are gathered here, under ctx.work_dir, for
# the caller to publish beside the final model.
STEP_ARTIFACTS_DIR = "artifacts"
# Names the caller publishes itself; a step's file may not take them.
RESERVED_ARTIFACT_NAMES = frozenset({"model.onnx", "model.zip", "report.json", "manifest.json"})

# Progress milestones over the whole job (0..1).
_MEASURE_ORIGINAL = (0.05, 0.15)
_STEPS_END = 0.95
# with deployment targets, the steps end here and the targets take the rest
_TARGETS_START = 0.6
# An other output agreeing with the original's on fewer of its elements gets a note.
OTHER_OUTPUT_AGREEMENT = 0.99
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

    The eval rows are split once (core.evaluation): steps see only the selection rows,
    every reported metric and the verdict use only the held-out rows.
    """
    prepared = prepare(
        model_path, datasets, spec, ctx, max_dataset_bytes=max_dataset_bytes, models=models
    )
    ctx = prepared.ctx
    device, model_info, data = ctx.device, prepared.model_info, prepared.data
    batch_sizes, rows_per_batch, manifest = (
        prepared.batch_sizes,
        prepared.rows_per_batch,
        prepared.manifest,
    )
    eval_arrays, eval_feeds, split = prepared.eval_arrays, prepared.eval_feeds, prepared.split
    calibration_arrays, notes = prepared.calibration_arrays, prepared.notes
    original, reference_outputs = prepared.original, prepared.reference_outputs
    other_outputs, selection_metric = prepared.other_outputs, prepared.selection_metric
    # Steps before the first quantize step are shared by every deployment target; the
    # quantize steps run for ONNX Runtime only when an ONNX Runtime target is named (an
    # OpenVINO target quantizes in OpenVINO: core.deployment).
    upstream_count = spec.upstream_steps()
    onnxruntime_wanted = not spec.deployment or any(
        target.runtime == "onnxruntime" for target in spec.deployment
    )
    steps = spec.steps if onnxruntime_wanted else spec.steps[:upstream_count]
    steps_end = _STEPS_END if not spec.deployment else _TARGETS_START
    span = (steps_end - _MEASURE_ORIGINAL[1]) / max(len(steps), 1)
    current_path = upstream_path = model_path
    step_results: list[StepResult] = []
    for index, step in enumerate(steps):
        progress = _MEASURE_ORIGINAL[1] + index * span
        label = f"step {index + 1}/{len(steps)} ({step.method})"
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
        metrics, outputs = measure_model_with_outputs(
            output.model_path,
            eval_arrays,
            spec.task,
            batch_sizes,
            ctx.measure,
            device,
            reference_outputs=reference_outputs,
            check_cancelled=ctx.check_cancelled,
            score_rows=split.held_out,
        )
        metrics.metric_change = metrics.metric_value - original.metric_value
        metrics.selection_metric_value = _metric_on(
            spec.task, eval_arrays, outputs, reference_outputs, split.selection
        )
        metrics.other_outputs = compare_other_outputs(
            other_outputs,
            capture_other_outputs(
                output.model_path,
                eval_arrays,
                spec.task,
                ctx.measure,
                device,
                ctx.check_cancelled,
            ),
            rows_per_batch,
        )
        unchanged = output.unchanged_reason or _same_files_reason(current_path, output.model_path)
        step_results.append(
            StepResult(
                index=index,
                method=step.method,
                metrics=metrics,
                duration_s=duration_s,
                details=output.details,
                unchanged_reason=unchanged,
                metric_checks=metric_checks(
                    original.metric_value, metrics.metric_value, spec.targets
                ),
            )
        )
        ctx.report(
            progress + span,
            f"{label}: done",
            step=index,
            method=step.method,
            metrics=metrics.model_dump(),
            details=output.details,
            unchanged_reason=unchanged,
        )
        current_path = output.model_path
        if index + 1 == upstream_count:
            upstream_path = output.float_model_path or current_path
        _collect_artifacts(index, output, ctx.work_dir / STEP_ARTIFACTS_DIR)

    final_path = ctx.work_dir / FINAL_MODEL_NAME
    copy_model(current_path, final_path)
    unchanged_reason = _job_unchanged_reason(model_path, final_path, step_results)

    ctx.report(steps_end, "comparing the original and final latency")
    layout = feed_layout(eval_arrays, model_info.inputs, spec.task)
    speed = _compare_speed(model_path, final_path, original, eval_feeds, layout, batch_sizes, ctx)
    last = step_results[-1].metrics if step_results else original
    original, final = _with_interleaved_latency(original, last, speed)
    verdict = compute_verdict(
        original,
        final,
        speed,
        spec.targets,
        batch_size=spec.batch_size,
        unchanged_reason=unchanged_reason,
    )
    targets = []
    if spec.deployment:
        targets = run_targets(
            TargetInputs(
                spec=spec,
                original_path=model_path,
                upstream_path=upstream_path,
                steps_result_path=final_path,
                steps_unchanged_reason=unchanged_reason,
                inputs=model_info.inputs,
                eval_arrays=eval_arrays,
                eval_feeds=eval_feeds,
                layout=layout,
                split=split,
                reference_outputs=reference_outputs,
                calibration_feeds=model_feeds(calibration_arrays, model_info.inputs, spec.task),
                calibration_layout=feed_layout(calibration_arrays, model_info.inputs, spec.task),
                original_metrics=original,
                selection_metric=selection_metric,
                batch_sizes=batch_sizes,
            ),
            dataclasses.replace(ctx, progress_span=(_TARGETS_START, _STEPS_END)),
        )
        if not onnxruntime_wanted:
            # the job's verdict is its first working target's: it asked for no ONNX Runtime
            # model; with none working there is no result to deliver
            working = [t for t in targets if t.verdict.outcome != "failed"]
            if not working:
                raise StepFailed(
                    "no deployment target could handle the model: "
                    + "; ".join(t.verdict.outcome_reason for t in targets)
                )
            final, verdict = working[0].final, working[0].verdict
    notes += [
        Note(code="deployment_target_failed", message=t.verdict.outcome_reason)
        for t in targets
        if t.verdict.outcome == "failed"
    ]
    notes += changed_output_notes(final)
    result = PipelineResult(
        original=original,
        steps=step_results,
        final=final,
        verdict=verdict,
        manifest=manifest,
        evaluation=EvaluationRecord(
            **split.record.model_dump(), original_selection_metric=selection_metric
        ),
        notes=notes,
        targets=targets,
    )
    ctx.report(
        1.0,
        "done",
        targets_met=verdict.targets_met,
        outcome=verdict.outcome,
        outcome_reason=verdict.outcome_reason,
    )
    return result, final_path


@dataclasses.dataclass
class Prepared:
    """What every step of a job starts from: its checked data, the eval rows' split, the
    original's measurement and outputs, and the StepData the steps see."""

    ctx: RunContext  # with the resolved device
    model_info: ModelInfo
    batch_sizes: list[int]
    rows_per_batch: int
    manifest: dict[str, Any]
    eval_arrays: Mapping[str, np.ndarray]
    eval_feeds: Feeds
    split: EvalSplit
    calibration_arrays: Mapping[str, np.ndarray]
    notes: list[Note]
    original: ModelMetrics
    reference_outputs: np.ndarray
    other_outputs: OutputSnapshot
    selection_metric: float
    data: StepData


def prepare(
    model_path: Path,
    datasets: dict[str, Path],
    spec: JobSpec,
    ctx: RunContext,
    *,
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
    models: Mapping[str, Path] | None = None,
) -> Prepared:
    """Validate the model and data, split the eval rows, measure the original: what
    `run` does before its first step, and what a helper that runs part of a job's first
    step on another worker (core.recipe.helper) does to see the very same StepData."""
    device = resolve_device(ctx.device)
    ctx = dataclasses.replace(ctx, device=device)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.report(0.0, "validating the model and data")

    model_info = inspect_model(model_path)
    eval_path = _dataset_path(datasets, spec.eval_dataset_id)
    train_path = _dataset_path(datasets, spec.train_dataset_id) if spec.train_dataset_id else None
    calibration_path = (
        _dataset_path(datasets, spec.calibration_dataset_id)
        if spec.calibration_dataset_id
        else train_path or eval_path
    )
    for path in dict.fromkeys(p for p in (eval_path, calibration_path, train_path) if p):
        _check_dataset(model_info, path, spec, max_dataset_bytes)
    batch_sizes = _deployment_batch_sizes(model_info, spec)
    rows_per_batch = eval_batch_size(model_info.inputs, spec.task)

    # External data files are part of the model's bytes: each one is hashed too.
    model_file_paths = model_files(model_path)
    manifest_inputs = (
        {"model": model_path}
        | {f"model:{path.relative_to(model_path.parent)}": path for path in model_file_paths[1:]}
        | {dataset_id: _dataset_path(datasets, dataset_id) for dataset_id in spec.dataset_ids()}
        | dict(models or {})
    )
    manifest = build_manifest(manifest_inputs, spec, device)
    _refuse_training_on_eval_bytes(spec, manifest)
    eval_arrays = load_arrays(eval_path)
    train_arrays = load_arrays(train_path) if train_path is not None else None
    eval_feeds = model_feeds(eval_arrays, model_info.inputs, spec.task)
    split = split_eval_rows(sample_count(eval_feeds), spec.seed, spec.held_out_fraction)
    selection_arrays = rows_of(eval_arrays, split.selection, spec.task, sample_count(eval_feeds))
    if calibration_path == eval_path:
        calibration_arrays: Mapping[str, np.ndarray] = selection_arrays
    elif calibration_path == train_path and train_arrays is not None:
        calibration_arrays = train_arrays
    else:
        calibration_arrays = load_arrays(calibration_path)
    notes = data_notes(spec, model_info, eval_arrays, train_arrays, calibration_path == eval_path)
    if split.record.note:
        notes.append(Note(code="eval_rows_not_split", message=split.record.note))
    ctx.report(
        0.01,
        "validated the model and data",
        evaluation=split.record.model_dump(),
        notes=[note.model_dump() for note in notes],
    )

    ctx.report(_MEASURE_ORIGINAL[0], "measuring the original model")
    # The original's outputs are computed once, on every eval row, and are the reference
    # for every later model; its reported metric is the held-out rows'.
    original, reference_outputs = measure_model_with_outputs(
        model_path,
        eval_arrays,
        spec.task,
        batch_sizes,
        ctx.measure,
        device,
        check_cancelled=ctx.check_cancelled,
        score_rows=split.held_out,
    )
    selection_metric = _metric_on(
        spec.task, eval_arrays, reference_outputs, reference_outputs, split.selection
    )
    original.selection_metric_value = selection_metric
    other_outputs = capture_other_outputs(
        model_path, eval_arrays, spec.task, ctx.measure, device, ctx.check_cancelled
    )
    original.other_outputs = compare_other_outputs(other_outputs, other_outputs, rows_per_batch)
    ctx.report(_MEASURE_ORIGINAL[1], "measured the original model", metrics=original.model_dump())

    data = StepData(
        selection_arrays,
        calibration_arrays,
        model_info.inputs,
        spec.task,
        train_arrays=train_arrays,
        targets=spec.targets,
        batch_size=spec.batch_size,
        batch_sizes=tuple(batch_sizes),
        reference_outputs=reference_outputs[split.selection],
        original_metrics=original.model_copy(
            update={"metric_value": selection_metric, "metric_rows": len(split.selection)}
        ),
        original_model_path=model_path,
        models=dict(models or {}),
        timing_sessions=onnxruntime_sessions(spec, device),
    )
    return Prepared(
        ctx=ctx,
        model_info=model_info,
        batch_sizes=batch_sizes,
        rows_per_batch=rows_per_batch,
        manifest=manifest,
        eval_arrays=eval_arrays,
        eval_feeds=eval_feeds,
        split=split,
        calibration_arrays=calibration_arrays,
        notes=notes,
        original=original,
        reference_outputs=reference_outputs,
        other_outputs=other_outputs,
        selection_metric=selection_metric,
        data=data,
    )


def changed_output_notes(final: ModelMetrics) -> list[Note]:
    """A note for every other output the final model no longer computes as the original
    did (the metric does not read them, so only this says a broken state output)."""
    return [
        Note(
            code="other_output_changed",
            message=(
                f"output {name!r} (not read by the metric) agrees with the original's on "
                f"{comparison.agreement:.1%} of its elements (max abs diff "
                f"{comparison.max_abs_diff:.3g}, on {comparison.rows} rows)"
            ),
        )
        for name, comparison in final.other_outputs.items()
        if comparison.agreement < OTHER_OUTPUT_AGREEMENT
    ]


def data_notes(
    spec: JobSpec,
    model: ModelInfo,
    eval_arrays: Mapping[str, np.ndarray],
    train_arrays: Mapping[str, np.ndarray] | None,
    eval_calibrates: bool,
) -> list[Note]:
    """What the user should know about how the data was used (pure)."""
    notes: list[Note] = []
    task = spec.task
    if task.kind != "embedding" and task.labels not in eval_arrays:
        metric = (
            f"{judged_metric(task, has_labels=False)}, a comparison with the original "
            "model's outputs, not a score against labels"
        )
        if task.kind == "classification":
            metric = "agreement with the original model's predictions, not accuracy against labels"
        notes.append(
            Note(
                code="metric_without_labels",
                message=(
                    f"the eval data {spec.eval_dataset_id!r} has no array {task.labels!r}: the "
                    f"metric is {metric}. Name the label array with task.labels (CLI: "
                    "--labels NAME)"
                ),
            )
        )
    calibrating = any(getattr(step, "mode", None) in ("static", "auto") for step in spec.steps)
    if eval_calibrates and calibrating:
        notes.append(
            Note(
                code="eval_doubles_as_calibration",
                message=(
                    "no calibration_dataset_id or train_dataset_id was given: the activation "
                    "ranges were calibrated on the eval data's selection rows (never the "
                    "held-out rows); give calibration data of its own for an independent figure"
                ),
            )
        )
    if train_arrays is not None:
        shared = shared_rows(model, task, eval_arrays, train_arrays)
        if shared:
            notes.append(
                Note(
                    code="train_eval_overlap",
                    message=(
                        f"{shared} eval rows also appear in the training data (identical "
                        "inputs): the metric on them is optimistic; remove them from one side"
                    ),
                )
            )
    return notes


def shared_rows(
    model: ModelInfo,
    task: TaskSpec,
    eval_arrays: Mapping[str, np.ndarray],
    train_arrays: Mapping[str, np.ndarray],
) -> int:
    """How many eval rows have inputs identical to some training row (hashed per row)."""
    try:
        eval_feeds = model_feeds(eval_arrays, model.inputs, task)
        train_feeds = model_feeds(train_arrays, model.inputs, task)
    except IncompatibleData:
        return 0
    return len(_row_digests(eval_feeds) & _row_digests(train_feeds))


def _row_digests(feeds: Feeds) -> set[bytes]:
    names = sorted(feeds)
    digests: set[bytes] = set()
    for row in range(sample_count(feeds)):
        digest = hashlib.blake2b(digest_size=16)
        for name in names:
            digest.update(np.ascontiguousarray(feeds[name][row]).tobytes())
        digests.add(digest.digest())
    return digests


def _metric_on(
    task: TaskSpec,
    eval_arrays: Mapping[str, np.ndarray],
    outputs: np.ndarray,
    reference: np.ndarray,
    rows: np.ndarray,
) -> float:
    """A model's metric on `rows` of the eval data, against the original's outputs."""
    labels = eval_arrays.get(task.labels) if task.kind != "embedding" else None
    return score(
        task,
        outputs[rows],
        None if labels is None else np.asarray(labels)[rows],
        reference[rows],
    )[1]


def _same_files_reason(before: Path, after: Path) -> str | None:
    if files_digest(before) == files_digest(after):
        return "the step returned its input byte for byte"
    return None


def _job_unchanged_reason(original: Path, final: Path, steps: list[StepResult]) -> str | None:
    """Why the job's result is its input, or None when it may differ."""
    reasons = "; ".join(
        f"step {step.index + 1} ({step.method}): {step.unchanged_reason}"
        for step in steps
        if step.unchanged_reason
    )
    if files_digest(original) == files_digest(final):
        return "the result is the input, byte for byte" + (f" ({reasons})" if reasons else "")
    if all(s.unchanged_reason for s in steps):
        return f"every step left the model as it was ({reasons})"
    return None


def _compare_speed(
    original_path: Path,
    final_path: Path,
    original: ModelMetrics,
    feeds: Feeds,
    layout: FeedLayout,
    batch_sizes: list[int],
    ctx: RunContext,
) -> list[SpeedComparison]:
    """The final model against the original at every deployment batch size, re-timed
    interleaved (A, B, A', ...: A' a second session of the original, for the noise).

    Timed minutes apart, machine noise alone can move a ratio; timed interleaved in one
    process, both see the same conditions. The step results keep their own timings.
    The same file is not timed against itself: its ratio is 1 by construction.
    """
    if files_digest(original_path) == files_digest(final_path):
        return [
            SpeedComparison(
                batch_size=lat.batch_size,
                median_ms=lat.median_ms,
                p95_ms=lat.p95_ms,
                baseline_median_ms=lat.median_ms,
                baseline_p95_ms=lat.p95_ms,
                ratio=1.0,
                tolerance=MIN_TOLERANCE,
                runs=lat.runs,
            )
            for lat in original.latency
        ]
    (speed,) = compare_to_original(
        original_path,
        [final_path],
        feeds,
        batch_sizes,
        ctx.measure,
        ctx.device,
        check_cancelled=ctx.check_cancelled,
        layout=layout,
    )
    return speed


def _with_interleaved_latency(
    original: ModelMetrics, final: ModelMetrics, speed: list[SpeedComparison]
) -> tuple[ModelMetrics, ModelMetrics]:
    before = [
        Latency(
            batch_size=c.batch_size,
            median_ms=c.baseline_median_ms,
            p95_ms=c.baseline_p95_ms,
            runs=c.runs,
        )
        for c in speed
    ]
    after = [
        Latency(batch_size=c.batch_size, median_ms=c.median_ms, p95_ms=c.p95_ms, runs=c.runs)
        for c in speed
    ]
    return (
        original.model_copy(update={"latency": before}),
        final.model_copy(update={"latency": after}),
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


def onnxruntime_sessions(spec: JobSpec, device: str) -> tuple[RunSettings, ...]:
    """The sessions of the spec's ONNX Runtime deployment targets on `device` (each
    thread count once, in the spec's order): what the steps time their candidates under.
    Empty without such a target (the worker's MeasureSettings then)."""
    sessions: list[RunSettings] = []
    for target in spec.deployment:
        if target.runtime != "onnxruntime" or target.device != device:
            continue
        for session in target.resolve(device=target.device):
            if session not in sessions:
                sessions.append(session)
    return tuple(sessions)


def _deployment_batch_sizes(model: ModelInfo, spec: JobSpec) -> list[int]:
    """The batch sizes latency is judged at; a model that pins its batch dimension runs
    at that size only, and a spec asking for another is refused."""
    pinned = pinned_batch_size(model.inputs, spec.task)
    if pinned is None:
        return spec.deployment_batch_sizes()
    asked = sorted(set(spec.batch_sizes or [spec.batch_size]))
    if asked != [pinned]:
        raise IncompatibleData(
            f"the model pins its batch dimension to {pinned}, so latency cannot be measured "
            f"at batch size {', '.join(map(str, asked))}; set batch_size to {pinned} (and "
            "leave batch_sizes unset) or export with a dynamic batch axis"
        )
    return [pinned]


def _refuse_training_on_eval_bytes(spec: JobSpec, manifest: dict[str, Any]) -> None:
    """Training data with the eval data's bytes under another id: the model would score
    itself (the API refuses this at submission; the engine does not trust its caller)."""
    if spec.train_dataset_id is None:
        return
    hashes = {name: entry["sha256"] for name, entry in manifest["inputs"].items()}
    if hashes.get(spec.train_dataset_id) == hashes.get(spec.eval_dataset_id):
        raise IncompatibleData(
            f"train_dataset_id {spec.train_dataset_id!r} and eval_dataset_id "
            f"{spec.eval_dataset_id!r} hold the same data: a model trained on its eval rows "
            "scores itself; use separate training and eval splits",
            code="data_leakage",
        )
