"""What the CLI prints: aligned tables, a job's status, the before/after report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from squeeze.client.models import Batch, Job, JobError, JobResult, Metrics


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the headers."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [headers, ["-" * width for width in widths], *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def size(size_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size_bytes) < 1024 or unit == "GiB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024
    raise AssertionError("unreachable")


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


OUTCOME_WORDS = {
    "improved": "improved",
    "unchanged": "UNCHANGED",
    "targets_missed": "targets MISSED",
}


def outcome(job: Job) -> str:
    """`succeeded: improved` / `succeeded: UNCHANGED` / `succeeded: targets MISSED` /
    `failed: code` / the state."""
    return state_words(job.state, job.outcome, job.targets_met, job.error)


def state_words(
    state: str, job_outcome: str | None, targets_met: bool | None, error: JobError | None
) -> str:
    if state == "succeeded" and job_outcome in OUTCOME_WORDS:
        return f"succeeded: {OUTCOME_WORDS[job_outcome]}"
    if state == "succeeded" and targets_met is not None:  # a service from before outcomes
        return f"succeeded, targets {'met' if targets_met else 'MISSED'}"
    if error is not None:
        return f"{state}: {error.code}"
    return state


def method(spec: dict[str, Any]) -> str:
    steps = spec.get("steps") or []
    labels = []
    for step in steps:
        variant = step.get("mode") or step.get("kind") or ""
        labels.append(f"{step.get('method')}{'/' + variant if variant else ''}")
    return " + ".join(labels)


def job_status(job: Job) -> str:
    rows = [
        ("job", job.id),
        ("state", outcome(job)),
        ("progress", f"{job.progress:.0%}"),
        ("step", job.current_step or "-"),
        ("method", method(job.spec)),
        ("model", str(job.spec.get("model_id", "-"))),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.outcome_reason and job.state == "succeeded":
        rows.append(("outcome", job.outcome_reason))
    if job.batch_id:
        rows.append(("batch", job.batch_id))
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def job_rows(jobs: Sequence[Job]) -> str:
    rows = [
        [job.id, outcome(job), f"{job.progress:.0%}", method(job.spec), when(job.created_at)]
        for job in jobs
    ]
    return table(["job", "state", "progress", "method", "created"], rows)


def batch_status(batch: Batch, names: dict[str, str] | None = None) -> str:
    """The counts, then a row per job; `names` shows models by file name instead of id."""
    counts = ", ".join(f"{count} {state}" for state, count in batch.counts.items() if count)
    head = (
        f"batch {batch.id}: {batch.state}, {batch.total} jobs ({counts or 'none'}), "
        f"{batch.progress:.0%}"
    )
    if not batch.jobs:
        return head
    rows = []
    for job in batch.jobs:
        state = state_words(job.state, job.outcome, job.targets_met, job.error)
        model = (names or {}).get(job.model_id, job.model_id)
        rows.append([job.id, model, state, f"{job.progress:.0%}"])
    return head + "\n\n" + table(["job", "model", "state", "progress"], rows)


def _number(value: float) -> str:
    """Bytes and other large values in full, ratios and metrics to 4 digits."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value + 0.0:.4g}"  # + 0.0: no "-0"


def _metrics_row(label: str, metrics: Metrics, batch_sizes: Sequence[int]) -> list[str]:
    cells = [label, size(metrics.size_bytes), f"{metrics.parameters:,}"]
    for batch_size in batch_sizes:
        latency = metrics.latency_at(batch_size)
        cells.append("-" if latency is None else f"{latency.median_ms:.3f} / {latency.p95_ms:.3f}")
    cells.append(f"{metrics.metric_value:.4f}")
    return cells


def report(job: Job, result: JobResult) -> str:
    """The before/after table from the job's stored metrics, the outcome and every check."""
    batch_sizes = sorted({lat.batch_size for lat in result.final.latency}) or [1]
    headers = ["model", "size", "params"]
    headers += [f"latency b{b} ms (med/p95)" for b in batch_sizes]
    headers.append(result.original.metric_name)
    rows = [_metrics_row("original", result.original, batch_sizes)]
    for step in result.steps:
        variant = step.details.get("mode") or step.details.get("kind") or ""
        label = f"after {step.index + 1}: {step.method} {variant}".rstrip()
        rows.append(_metrics_row(label, step.metrics, batch_sizes))
    rows.append(_metrics_row("final (re-measured)", result.final, batch_sizes))
    verdict = result.verdict
    speed = ", ".join(
        f"b{entry.batch_size} {entry.ratio:.3f}" for entry in verdict.speed
    ) or f"{verdict.latency_ratio:.3f}"
    lines = [
        f"job {job.id}: {outcome(job)}",
    ]
    if verdict.outcome_reason:
        lines.append(f"  {verdict.outcome_reason}")
    lines += [
        "",
        table(headers, rows),
        "",
        f"size ratio {verdict.size_ratio:.3f}, latency ratio {speed}, "
        f"metric change {verdict.metric_change:+.4f}",
    ]
    if result.evaluation is not None:
        evaluation = result.evaluation
        lines.append(
            f"metric on {evaluation.held_out_rows} held-out eval rows; steps chose on "
            f"{evaluation.selection_rows} others"
            if evaluation.split
            else f"metric on all {evaluation.rows} eval rows (not split)"
        )
    for check in verdict.checks:
        state = "met" if check.met else "NOT met"
        where = f" at batch {check.batch_size}" if check.batch_size is not None else ""
        lines.append(
            f"target {check.target}{where}: limit {_number(check.limit)}, "
            f"measured {_number(check.measured)} -> {state}"
        )
    lines.append(f"targets met: {'yes' if verdict.targets_met else 'NO'}")
    if result.targets:
        lines += ["", "deployment targets:", target_table(result)]
    for note in result.notes:
        lines.append(f"note ({note.code}): {note.message}")
    return "\n".join(lines)


def target_table(result: JobResult) -> str:
    """One row per deployment target: its model, size, speed (vs its runtime's original
    and vs ONNX Runtime's) at each batch size and thread count, metric change, outcome."""
    rows = []
    for target in result.targets:
        speed = " ".join(
            f"b{s.batch_size}/t{s.threads}:{s.ratio:.2f}x" for s in target.verdict.speed
        )
        ort = " ".join(f"{s.ratio:.2f}x" for s in target.vs_onnxruntime)
        rows.append(
            [
                target.name,
                target.chosen,
                f"{target.verdict.size_ratio:.3f}",
                speed,
                ort,
                f"{target.verdict.metric_change:+.4f}",
                OUTCOME_WORDS.get(target.verdict.outcome or "", "-"),
            ]
        )
    return table(
        ["target", "model", "size ratio", "latency ratio", "vs onnxruntime", "metric", "outcome"],
        rows,
    )
