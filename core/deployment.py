"""Deployment targets: the job's model tuned and measured for each runtime it will run on.

A target (core.runtimes.settings.DeploymentTarget) is a runtime on a device with the
sessions the user deploys (thread counts, the runtime's own defaults or fair-timing
settings). Every target is judged the way the job's verdict judges the ONNX Runtime
result (core.verdict), against the job's original metric on the held-out rows, with its
latency compared with the *same runtime's* original (FP32) under each session and batch
size, and also with the ONNX Runtime original (what switching runtimes buys):

- `onnxruntime` targets take the steps' result (the pipeline's model), re-measured
  under the target's sessions.
- `openvino` targets take the model entering the first quantize step (the shared
  upstream: pruning, distillation, search), convert it with OpenVINO's converter and try
  its candidates (core.runtimes.openvino_compress): bf16 compute, NNCF's INT8 as a user
  runs it, NNCF INT8 with our accuracy fallback when plain INT8 misses the metric, NNCF
  weight compression on MatMul-heavy models, and the upstream model itself when steps
  changed it. They are chosen like quantize's auto candidates (core.tune.choose:
  metric criterion on the selection rows, never slower than the runtime's original at any
  session and batch size, then the fastest, then the smallest); the chosen one is
  re-timed and scored on the held-out rows for its verdict.

Timing of sessions deployed with their runtime's defaults (threads spinning after a run)
is in blocks (core.timing.time_interleaved `block`), so one session does not pay for the
other's spinning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.context import MeasureSettings, RunContext
from core.data import FeedLayout, Feeds, pinned_batch_size, sample_count, take_rows
from core.errors import EngineError, JobCancelled, short_reason
from core.evaluation import EvalSplit
from core.formats import TensorInfo, bytes_digest, count_parameters, load_model
from core.measure import collect_outputs, eval_batch_size, score, score_all
from core.results import Latency, ModelMetrics, SpeedAtBatch, TargetResult, Verdict
from core.runtimes import PreparedModel, Runner, RunSettings, get_runtime
from core.runtimes.settings import DeploymentTarget
from core.spec import JobSpec
from core.timing import (
    SPINNING_BLOCK,
    SpeedComparison,
    compare_times,
    noise_tolerance,
    time_interleaved,
)
from core.tune.choose import Named, Outcome, choose
from core.tune.judge import Criteria, Measurement, judge
from core.verdict import compute_verdict

# NNCF's calibration: at most this many items (batches) of the calibration rows.
CALIBRATION_ITEMS = 300
# Share of MatMul/Gemm weights above which weight compression is a candidate.
MATMUL_HEAVY = 0.5


@dataclass(frozen=True)
class TargetInputs:
    """What every target is measured on, prepared once by the pipeline."""

    spec: JobSpec
    original_path: Path  # the uploaded model
    upstream_path: Path  # the model entering the first quantize step
    steps_result_path: Path  # the steps' result (ONNX Runtime's model)
    steps_unchanged_reason: str | None
    inputs: list[TensorInfo]
    eval_arrays: Mapping[str, np.ndarray]
    eval_feeds: Feeds  # per-sample, samples on axis 0
    layout: FeedLayout
    split: EvalSplit
    reference_outputs: np.ndarray  # the original's metric output on every eval row
    calibration_feeds: Feeds
    calibration_layout: FeedLayout
    original_metrics: ModelMetrics  # the job's original on the held-out rows
    selection_metric: float  # the job's original on the selection rows
    batch_sizes: list[int]


@dataclass
class _Tried:
    name: str
    prepared: PreparedModel | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    outcome: Outcome | None = None


def run_targets(inputs: TargetInputs, ctx: RunContext) -> list[TargetResult]:
    """One result per deployment target of the spec, in its order. A target that cannot
    handle the model (its runtime cannot convert, compile or run it) gets a failed
    verdict saying why; the other targets' results stand (a cancelled job stops)."""
    results = []
    for index, target in enumerate(inputs.spec.deployment):
        ctx.check_cancelled()
        folder = ctx.work_dir / "targets" / f"{index}-{target.name}"
        try:
            results.append(run_target(target, inputs, ctx, folder))
        except JobCancelled:
            raise
        except Exception as exc:
            results.append(failed_target(target, inputs, exc))
    return results


def failed_target(
    target: DeploymentTarget, inputs: TargetInputs, error: BaseException
) -> TargetResult:
    """The result of a target that could not be tuned or measured: outcome "failed" with
    the runtime's reason; its metrics are the job's original's (no model of its own)."""
    reason = (
        f"{error.code}: {error.message}" if isinstance(error, EngineError) else short_reason(error)
    )
    sentence = f"the {target.runtime} target failed on this model: {reason}"
    original = inputs.original_metrics
    return TargetResult(
        name=target.name,
        runtime=target.runtime,
        device=target.device,
        sessions=[s.describe() for s in target.resolve(device=target.device)],
        chosen="none",
        chosen_reason=sentence,
        original=original,
        final=original,
        verdict=Verdict(
            targets_met=False,
            checks=[],
            size_ratio=1.0,
            latency_ratio=1.0,
            metric_change=0.0,
            outcome="failed",
            outcome_reason=sentence,
        ),
        notes=[sentence],
    )


def run_target(
    target: DeploymentTarget, inputs: TargetInputs, ctx: RunContext, folder: Path
) -> TargetResult:
    runtime = get_runtime(target.runtime)
    sessions = target.resolve(device=target.device)
    measurer = _Measurer(inputs, ctx.measure, sessions, ctx.check_cancelled)
    if target.runtime == "onnxruntime":
        original = runtime.prepare(inputs.original_path, folder / "original")
        steps = runtime.prepare(inputs.steps_result_path, folder / "steps")
        tried = [_Tried("onnxruntime-steps", steps)]
    else:
        from core.runtimes import openvino_compress as ov

        original = ov.fp32_ir(inputs.original_path, folder / "original").prepared
        tried = _openvino_candidates(inputs, measurer, folder, ctx)
    onnxruntime = get_runtime("onnxruntime").prepare(inputs.original_path, folder / "ort-original")

    criteria = Criteria(
        targets=inputs.spec.targets,
        baseline_metric=inputs.selection_metric,
        input_size_bytes=original.size_bytes(),
        batch_sizes=tuple(inputs.batch_sizes),
        allow_slower=inputs.spec.targets.allow_slower,
    )
    # an ONNX Runtime target's one model was chosen by the steps: nothing to choose here
    usable = [t for t in tried if t.prepared is not None and target.runtime != "onnxruntime"]
    for item in usable:
        ctx.report_step(0.5, f"{target.name}: measuring {item.name}")
        assert item.prepared is not None
        try:
            (speed,) = measurer.speed(runtime.name, original, [item.prepared])
            name, value = measurer.metric(runtime.name, item.prepared, inputs.split.selection)
        except JobCancelled:
            raise
        except EngineError as exc:
            item.note = f"{exc.code}: {exc.message}"
            continue
        measurement = Measurement(
            item.prepared.size_bytes(), name, value, tuple(speed), inputs.selection_metric
        )
        item.outcome = Outcome(
            Named(item.name),
            "measured",
            measurement=measurement,
            judgement=judge(measurement, criteria),
            mode_details=item.details,
        )
    outcomes = [t.outcome for t in tried if t.outcome is not None]
    if target.runtime == "onnxruntime":
        # the steps chose this model (quantize auto by the same rules); the target judges
        # it under its own sessions, and may say it missed there, but never swaps it
        chosen_item: _Tried | None = tried[0]
        reason = "the steps' result, judged under this target's sessions"
    else:
        decision = choose(outcomes, criteria) if outcomes else None
        chosen_item = (
            next(t for t in tried if t.outcome is outcomes[decision.chosen])
            if decision is not None and decision.chosen is not None
            else None
        )
        reason = decision.reason if decision is not None else "no candidate could be measured"
    if chosen_item is not None and chosen_item.outcome is not None:
        chosen_item.outcome.chosen = True
    final_prepared = chosen_item.prepared if chosen_item is not None else original
    assert final_prepared is not None

    # the verdict: the chosen model re-timed (choosing the fastest flatters its timing)
    # with the runtime's original and the ONNX Runtime original, scored on held-out rows
    final_speed, ort_speed = measurer.speed(runtime.name, original, [final_prepared, onnxruntime])
    original_speed = [_baseline(c) for c in final_speed]
    unchanged = _unchanged_reason(target, inputs, chosen_item, reason)
    final_metrics = measurer.metrics(runtime.name, final_prepared, inputs, final_speed)
    original_metrics = measurer.metrics(runtime.name, original, inputs, original_speed)
    verdict = compute_verdict(
        inputs.original_metrics,
        final_metrics,
        final_speed,
        inputs.spec.targets,
        batch_size=inputs.spec.batch_size,
        unchanged_reason=unchanged,
    )
    artifacts = _publish(target, runtime.name, final_prepared, ctx.work_dir / "artifacts")
    return TargetResult(
        name=target.name,
        runtime=target.runtime,
        device=target.device,
        sessions=[s.describe() for s in sessions],
        chosen=chosen_item.name if chosen_item is not None else f"{target.runtime}-original",
        chosen_reason=reason,
        original=original_metrics,
        final=final_metrics,
        verdict=verdict,
        vs_onnxruntime=_vs_onnxruntime(final_speed, ort_speed),
        candidates=[_row(t, criteria.input_size_bytes) for t in tried],
        artifacts=artifacts,
        open_config=dict(final_prepared.open_config),
        notes=[t.note for t in tried if t.note],
    )


# --- OpenVINO's candidates -------------------------------------------------------------------


def _openvino_candidates(
    inputs: TargetInputs, measurer: _Measurer, folder: Path, ctx: RunContext
) -> list[_Tried]:
    from core.runtimes import openvino_compress as ov

    upstream = inputs.upstream_path
    calibration = _calibration_items(inputs, ctx.seed)
    tried: list[_Tried] = []

    def attempt(name: str, make: Callable[[], ov.Candidate]) -> _Tried:
        ctx.report_step(0.2, f"openvino: making {name}")
        item = _Tried(name)
        try:
            candidate = make()
            item.prepared, item.details = candidate.prepared, candidate.details
        except JobCancelled:
            raise
        except EngineError as exc:
            item.note = f"{name}: {exc.code}: {exc.message}"
        except Exception as exc:
            item.note = f"{name}: {short_reason(exc)}"
        tried.append(item)
        return item

    if upstream.resolve() != inputs.original_path.resolve():
        attempt("openvino-fp32-upstream", lambda: ov.fp32_ir(upstream, folder / "fp32"))
    attempt("openvino-bf16", lambda: ov.bf16_ir(upstream, folder / "bf16"))
    plain = attempt("nncf-int8", lambda: ov.nncf_int8(upstream, calibration, folder / "int8"))
    criterion = Criteria(
        targets=inputs.spec.targets,
        baseline_metric=inputs.selection_metric,
        input_size_bytes=1,
        batch_sizes=tuple(inputs.batch_sizes),
    ).metric_criterion
    if criterion is not None and plain.prepared is not None:
        _, value = measurer.metric("openvino", plain.prepared, inputs.split.selection)
        drop = ov.metric_drop(inputs.selection_metric, value, criterion.mode)
        if drop > criterion.limit:
            samples = measurer.samples(inputs.split.selection)
            attempt(
                "nncf-int8-fallback",
                lambda: ov.nncf_int8_with_fallback(
                    upstream,
                    calibration,
                    samples,
                    measurer.validate,
                    folder / "fallback",
                    max_drop=criterion.limit,
                    drop_type=criterion.mode,
                    reference_metric=inputs.selection_metric,
                ),
            )
    if ov.matmul_weight_share(upstream) > MATMUL_HEAVY:
        attempt("nncf-weights-int8", lambda: ov.compress_weights(upstream, folder / "w8"))
    return tried


def _calibration_items(inputs: TargetInputs, seed: int) -> list[dict[str, np.ndarray]]:
    """Up to CALIBRATION_ITEMS model feeds of the calibration rows (a seeded subset),
    one row each, or the model's pinned batch."""
    feeds = inputs.calibration_feeds
    rows = pinned_batch_size(inputs.inputs, inputs.spec.task) or 1
    total = sample_count(feeds)
    order = np.random.default_rng(seed).permutation(total)[: CALIBRATION_ITEMS * rows]
    items = []
    for start in range(0, len(order), rows):
        picked = np.sort(order[start : start + rows])
        batch = take_rows({n: a[picked] for n, a in feeds.items()}, rows)
        items.append(inputs.calibration_layout.to_model(batch))
    return items


# --- measuring in a runtime ------------------------------------------------------------------


class _Measurer:
    """Metrics and latency of prepared models in a runtime, on the job's eval rows."""

    def __init__(
        self,
        inputs: TargetInputs,
        measure: MeasureSettings,
        sessions: list[RunSettings],
        check_cancelled: Callable[[], None],
    ) -> None:
        self.inputs = inputs
        self.measure = measure
        self.sessions = sessions
        self.check_cancelled = check_cancelled
        task = inputs.spec.task
        labels = inputs.eval_arrays.get(task.labels) if task.kind != "embedding" else None
        self.labels = None if labels is None else np.asarray(labels)
        self.batch = eval_batch_size(inputs.inputs, task)

    def _open(self, runtime: str, prepared: PreparedModel, session: RunSettings) -> Runner:
        return get_runtime(runtime).open(prepared, session)

    def outputs(self, runner: Runner, rows: np.ndarray) -> np.ndarray:
        task = self.inputs.spec.task
        index = runner.output_names.index(task.metric_output(runner.output_names))
        feeds = {name: array[rows] for name, array in self.inputs.eval_feeds.items()}
        return collect_outputs(
            lambda batch: runner.run(batch)[index],
            feeds,
            self.batch,
            layout=self.inputs.layout,
            sample_axis=task.output_sample_axis,
            check_cancelled=self.check_cancelled,
            name=task.metric_output(runner.output_names),
        )

    def _scored(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The labels (if any) and the original's outputs on `rows`."""
        labels = None if self.labels is None else self.labels[rows]
        return labels, self.inputs.reference_outputs[rows]

    def metric(self, runtime: str, prepared: PreparedModel, rows: np.ndarray) -> tuple[str, float]:
        """The judged metric on `rows`, against the job's original."""
        runner = self._open(runtime, prepared, self.sessions[0])
        outputs = self.outputs(runner, rows)
        labels, reference = self._scored(rows)
        return score(self.inputs.spec.task, outputs, labels, reference)

    def samples(self, rows: np.ndarray) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Validation samples for NNCF's fallback: model feeds of `rows` in batches, each
        with the row indices it holds (the validate function scores against those)."""
        samples = []
        for start in range(0, len(rows), self.batch):
            picked = rows[start : start + self.batch]
            batch = take_rows({n: a[picked] for n, a in self.inputs.eval_feeds.items()}, self.batch)
            samples.append((self.inputs.layout.to_model(batch), picked))
        return samples

    def validate(
        self, runner: Runner, samples: Sequence[tuple[Mapping[str, np.ndarray], Any]]
    ) -> float:
        """The judged metric of `runner` over validation samples (see `samples`)."""
        task = self.inputs.spec.task
        index = runner.output_names.index(task.metric_output(runner.output_names))
        chunks, picked_rows = [], []
        for feeds, picked in samples:
            self.check_cancelled()
            output = np.moveaxis(np.asarray(runner.run(feeds)[index]), task.output_sample_axis, 0)
            chunks.append(output[: len(picked)])
            picked_rows.append(np.asarray(picked))
        rows = np.concatenate(picked_rows)
        outputs = np.concatenate(chunks)
        labels, reference = self._scored(rows)
        return score(task, outputs, labels, reference)[1]

    def speed(
        self, runtime: str, baseline: PreparedModel, candidates: Sequence[PreparedModel]
    ) -> list[list[SpeedComparison]]:
        """Each candidate against `baseline` (both in `runtime`; the last candidate may be
        an ONNX Runtime model, opened there) at every session and batch size."""
        per_candidate: list[list[SpeedComparison]] = [[] for _ in candidates]
        for session in self.sessions:
            base = self._open(runtime, baseline, session)
            copy = self._open(runtime, baseline, session)
            # the baseline itself (an unchanged steps' result, the original kept) is not
            # timed against itself: its ratio is 1 by construction, not the noise's draw
            itself = [_same_model(c, baseline) for c in candidates]
            others = [
                self._open(c.runtime, c, session)
                for c, same in zip(candidates, itself, strict=True)
                if not same
            ]
            block = SPINNING_BLOCK if session.runtime_defaults else 1
            for rows in self.inputs.batch_sizes:
                self.check_cancelled()
                feed = self.inputs.layout.to_model(take_rows(self.inputs.eval_feeds, rows))
                base_t, copy_t, *times = time_interleaved(
                    [_call(base, feed), _call(copy, feed), *(_call(o, feed) for o in others)],
                    self.measure.warmup_runs,
                    self.measure.runs,
                    block,
                )
                tolerance = noise_tolerance(base_t, copy_t)
                measured = iter(times)
                for index, same in enumerate(itself):
                    per_candidate[index].append(
                        _baseline(compare_times(rows, base_t, base_t, tolerance, session.threads))
                        if same
                        else compare_times(
                            rows, next(measured), base_t, tolerance, session.threads
                        )
                    )
        return per_candidate

    def metrics(
        self,
        runtime: str,
        prepared: PreparedModel,
        inputs: TargetInputs,
        speed: Sequence[SpeedComparison],
    ) -> ModelMetrics:
        """The model's metrics on the held-out rows and its latency from `speed`."""
        runner = self._open(runtime, prepared, self.sessions[0])
        rows = inputs.split.held_out
        outputs = self.outputs(runner, rows)
        labels, reference = self._scored(rows)
        every = score_all(inputs.spec.task, outputs, labels, reference)
        name = next(iter(every))
        return ModelMetrics(
            size_bytes=prepared.size_bytes(),
            parameters=_parameters(prepared, inputs),
            latency=[
                Latency(
                    batch_size=c.batch_size,
                    median_ms=c.median_ms,
                    p95_ms=c.p95_ms,
                    runs=c.runs,
                    threads=c.threads,
                )
                for c in speed
            ],
            metric_name=name,
            metric_value=every[name],
            metric_change=every[name] - inputs.original_metrics.metric_value,
            metric_rows=len(rows),
            metrics=every,
        )


def _call(runner: Runner, feed: Mapping[str, np.ndarray]) -> Callable[[], object]:
    return lambda: runner.run(feed)


def _same_model(a: PreparedModel, b: PreparedModel) -> bool:
    """The same runtime, opened the same way, from files with the same bytes."""
    if a.runtime != b.runtime or a.open_config != b.open_config or len(a.files) != len(b.files):
        return False
    return all(
        x.stat().st_size == y.stat().st_size and bytes_digest(x) == bytes_digest(y)
        for x, y in zip(a.files, b.files, strict=True)
    )


def _baseline(comparison: SpeedComparison) -> SpeedComparison:
    """The baseline's own side of a comparison (its ratio to itself is 1)."""
    return SpeedComparison(
        batch_size=comparison.batch_size,
        median_ms=comparison.baseline_median_ms,
        p95_ms=comparison.baseline_p95_ms,
        baseline_median_ms=comparison.baseline_median_ms,
        baseline_p95_ms=comparison.baseline_p95_ms,
        ratio=1.0,
        tolerance=comparison.tolerance,
        runs=comparison.runs,
        threads=comparison.threads,
    )


def _vs_onnxruntime(
    final: Sequence[SpeedComparison], onnxruntime: Sequence[SpeedComparison]
) -> list[SpeedAtBatch]:
    """The final model against the ONNX Runtime original: both were timed against the
    same baseline in the same interleaving, so their ratios divide."""
    compared = []
    for mine, theirs in zip(final, onnxruntime, strict=True):
        ratio = mine.ratio / max(theirs.ratio, 1e-12)
        compared.append(
            SpeedAtBatch(
                batch_size=mine.batch_size,
                threads=mine.threads,
                ratio=ratio,
                tolerance=mine.tolerance,
                median_ms=mine.median_ms,
                original_median_ms=theirs.median_ms,
                faster=ratio < 1.0 - mine.tolerance,
                slower=ratio > 1.0 + mine.tolerance,
            )
        )
    return compared


def _parameters(prepared: PreparedModel, inputs: TargetInputs) -> int:
    if prepared.entry.suffix == ".onnx":
        return count_parameters(load_model(prepared.entry))
    return inputs.original_metrics.parameters  # IR: the weights of the ONNX it came from


def _unchanged_reason(
    target: DeploymentTarget, inputs: TargetInputs, chosen: _Tried | None, reason: str
) -> str | None:
    if target.runtime == "onnxruntime":
        return inputs.steps_unchanged_reason
    if chosen is None:
        return f"OpenVINO keeps the original model, converted to FP32 IR: {reason}"
    return None


def _publish(
    target: DeploymentTarget, runtime: str, prepared: PreparedModel, folder: Path
) -> list[str]:
    """The target's model among the job's artifacts: OpenVINO IR as
    `model.<target>.xml` + `.bin` (the .xml finds its .bin by that name); an ONNX
    Runtime target's model is the job's `model.onnx` already."""
    if runtime == "onnxruntime":
        return ["model.onnx"]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for path in prepared.files:
        name = f"model.{target.name}{path.suffix}"
        (folder / name).write_bytes(path.read_bytes())
        names.append(name)
    return names


def _row(item: _Tried, input_size_bytes: int) -> dict[str, Any]:
    row: dict[str, Any] = {"name": item.name, "details": item.details}
    if item.note:
        row["note"] = item.note
    outcome = item.outcome
    if outcome is None or outcome.measurement is None or outcome.judgement is None:
        row["status"] = "failed" if item.note else "the steps' result"
        return row
    m, j = outcome.measurement, outcome.judgement
    return row | {
        "status": "measured",
        "chosen": outcome.chosen,
        "size_bytes": m.size_bytes,
        "size_ratio": m.size_bytes / max(input_size_bytes, 1),
        "metric_name": m.metric_name,
        "metric_value": m.metric_value,
        "metric_drop": j.metric_drop,
        "latency_ratio": j.latency_ratio,
        "latency": [
            {
                "batch_size": c.batch_size,
                "threads": c.threads,
                "ratio": c.ratio,
                "median_ms": c.median_ms,
                "slower": c.slower,
            }
            for c in m.latency
        ],
        "met": dict(j.met),
    }
