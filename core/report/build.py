"""Build a job's report from its record: the before/after table, the verdict, and a
section per step with its facts and plot data. Pure: no I/O, no drawing.

A succeeded job's report is built from its result. A job without a result (queued,
running, failed, cancelled) shows what its latest attempt measured so far, read from its
progress events: the original model's metrics and every finished step's metrics and
details, as the pipeline reports them (`core.pipeline.run`).
"""

from __future__ import annotations

from pydantic import ValidationError

from core.report.model import (
    ErrorSection,
    JobRecord,
    JobSection,
    LatencyCell,
    MetricsRow,
    Report,
    StepSection,
    TargetSection,
    VerdictSection,
)
from core.report.steps import step_section
from core.results import ModelMetrics, StepResult
from core.spec import JobSpec, Step

FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})


def build_report(record: JobRecord) -> Report:
    """The report of the job as `record` has it (complete only with a result)."""
    spec = record.spec
    labels = [step_label(step) for step in spec.steps]
    notes: list[str] = []
    if record.result is not None:
        original: ModelMetrics | None = record.result.original
        steps = record.result.steps
        final: ModelMetrics | None = record.result.final
    else:
        original, steps = measured_so_far(record, notes)
        final = None
        notes.append(_progress_note(record, len(steps)))

    batch_sizes = report_batch_sizes(spec, original)
    rows: list[MetricsRow] = []
    if original is not None:
        rows.append(metrics_row("original", "original", original, original, batch_sizes))
        rows += [
            metrics_row(
                f"after step {s.index + 1}: {_label(labels, s.index, s.method)}",
                "step",
                s.metrics,
                original,
                batch_sizes,
            )
            for s in steps
        ]
        if final is not None:
            rows.append(metrics_row("final", "final", final, original, batch_sizes))

    sections: list[StepSection] = [
        step_section(
            s.index, s.method, _label(labels, s.index, s.method), s.duration_s or None, s.details
        )
        for s in steps
    ]
    verdict = None
    if record.result is not None:
        v = record.result.verdict
        verdict = VerdictSection(
            targets_met=v.targets_met,
            checks=v.checks,
            size_ratio=v.size_ratio,
            latency_ratio=v.latency_ratio,
            metric_change=v.metric_change,
            outcome=v.outcome,
            outcome_reason=v.outcome_reason,
            speed=v.speed,
            evaluation=record.result.evaluation,
            notes=record.result.notes,
        )
    targets = [
        TargetSection(
            name=t.name,
            sessions=t.sessions,
            chosen=t.chosen,
            chosen_reason=t.chosen_reason,
            outcome=t.verdict.outcome,
            outcome_reason=t.verdict.outcome_reason,
            size_bytes=t.final.size_bytes,
            size_ratio=t.verdict.size_ratio,
            metric_value=t.final.metric_value,
            metric_change=t.verdict.metric_change,
            speed=t.verdict.speed,
            vs_onnxruntime=t.vs_onnxruntime,
            candidates=t.candidates,
            artifacts=t.artifacts,
        )
        for t in (record.result.targets if record.result is not None else [])
    ]
    error = None
    if record.error_code is not None:
        error = ErrorSection(
            code=record.error_code, message=record.error_message or record.error_code
        )
    return Report(
        job=job_section(record, labels, batch_sizes),
        complete=record.result is not None,
        error=error,
        comparison=rows,
        verdict=verdict,
        targets=targets,
        steps=sections,
        notes=notes,
    )


def step_label(step: Step) -> str:
    """`method (mode|kind|family)`, e.g. "quantize (auto)", "prune (structured)"."""
    for field in ("mode", "kind", "family"):
        variant = getattr(step, field, None)
        if isinstance(variant, str):
            return f"{step.method} ({variant})"
    return step.method


def _label(labels: list[str], index: int, method: str) -> str:
    return labels[index] if 0 <= index < len(labels) else method


def report_batch_sizes(spec: JobSpec, original: ModelMetrics | None) -> list[int]:
    """The batch sizes the original was timed at (a pinned model: its one), else the
    spec's deployment batch sizes; each is one latency column, never twice."""
    measured = sorted({lat.batch_size for lat in original.latency}) if original else []
    return measured or spec.deployment_batch_sizes()


def job_section(record: JobRecord, labels: list[str], batch_sizes: list[int]) -> JobSection:
    spec: JobSpec = record.spec
    return JobSection(
        id=record.id,
        state=record.state,
        progress=record.progress,
        current_step=record.current_step,
        last_message=record.events[-1].message if record.events else None,
        attempt=record.attempt,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        model_id=spec.model_id,
        model_filename=record.model_filename,
        task=spec.task.kind,
        batch_size=spec.batch_size,
        batch_sizes=batch_sizes,
        steps=labels,
        targets=spec.targets.model_dump(exclude_defaults=True),
    )


def metrics_row(
    label: str, role: str, metrics: ModelMetrics, original: ModelMetrics, batch_sizes: list[int]
) -> MetricsRow:
    return MetricsRow(
        label=label,
        role=role,  # type: ignore[arg-type]  # one of the Literal's values, by the callers
        size_bytes=metrics.size_bytes,
        size_ratio=metrics.size_bytes / max(original.size_bytes, 1),
        parameters=metrics.parameters,
        latency=[latency_at(metrics, batch_size) for batch_size in batch_sizes],
        metric_name=metrics.metric_name,
        metric_value=metrics.metric_value,
        metric_change=metrics.metric_change,
        metrics=metrics.metrics,
        other_outputs=metrics.other_outputs,
    )


def latency_at(metrics: ModelMetrics, batch_size: int) -> LatencyCell | None:
    for latency in metrics.latency:
        if latency.batch_size == batch_size:
            return LatencyCell(
                batch_size=batch_size, median_ms=latency.median_ms, p95_ms=latency.p95_ms
            )
    return None


def measured_so_far(
    record: JobRecord, notes: list[str]
) -> tuple[ModelMetrics | None, list[StepResult]]:
    """The original's metrics and the finished steps, from the latest attempt's events
    (the pipeline's "measured the original model" and "step i/n: done" reports)."""
    original: ModelMetrics | None = None
    steps: dict[int, StepResult] = {}
    for event in record.events:
        data = event.data
        if "metrics" not in data:
            continue
        try:
            if "step" not in data:
                original = ModelMetrics.model_validate(data["metrics"])
            elif "details" in data:
                step = StepResult(
                    index=data["step"],
                    method=data.get("method", "?"),
                    metrics=data["metrics"],
                    duration_s=0.0,  # not reported in events; shown as unknown
                    details=data["details"],
                )
                steps[step.index] = step
        except ValidationError:
            notes.append(f"an event could not be read: {event.message!r}")
    return original, [steps[index] for index in sorted(steps)]


def _progress_note(record: JobRecord, finished_steps: int) -> str:
    total = len(record.spec.steps)
    if record.state == "queued":
        return "the job is queued: nothing has been measured yet"
    if record.state == "running":
        return (
            f"the job is running ({record.progress:.0%}): this report shows what was "
            f"measured so far ({finished_steps} of {total} steps finished)"
        )
    if record.state in FINISHED_STATES:
        return (
            f"the job ended {record.state} without a result: this report shows what was "
            f"measured before it ended ({finished_steps} of {total} steps finished)"
        )
    return f"the job is {record.state}"
