"""Measure a model: size on disk, parameters, latency on ONNX Runtime, and the task metric.

Everything returned is measured by running the model. Timing sessions use fixed threads
and no thread spinning: with spinning on, sessions timed in one process on a small
machine came out 4-7x too slow (see the field notes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.context import MeasureSettings
from core.data import (
    FeedLayout,
    Feeds,
    feed_layout,
    iter_batches,
    model_feeds,
    pinned_batch_size,
    sample_count,
    take_rows,
)
from core.errors import IncompatibleData, StepFailed, short_reason
from core.formats import TensorInfo, load_model, model_size_bytes
from core.formats import count_parameters as _count_model_parameters
from core.metrics import compute as compute_metric
from core.metrics import judged_metric, reported_metrics
from core.results import Latency, ModelMetrics, OutputComparison
from core.runtimes import ort_runtime
from core.runtimes.settings import RunSettings
from core.spec import TaskSpec
from core.timing import SPINNING_BLOCK, SpeedComparison, compare_runs, time_interleaved

# Rows per run when computing the metric; models that pin their batch dim use theirs.
DEFAULT_EVAL_BATCH = 64
_COSINE_EPS = 1e-12

CancelCheck = Callable[[], None]
MetricName = str


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for a resolved device ("cuda" keeps the CPU as fallback)."""
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(settings: MeasureSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def open_session(path: Path, settings: MeasureSettings, device: str) -> ort.InferenceSession:
    """A session configured for timing; raises StepFailed when ONNX Runtime cannot load it."""
    try:
        return ort.InferenceSession(
            str(path), session_options(settings), providers=providers_for(device)
        )
    except Exception as exc:
        raise StepFailed(f"ONNX Runtime cannot load {path.name}: {short_reason(exc)}") from exc


def session_inputs(session: ort.InferenceSession) -> list[TensorInfo]:
    """The session's inputs as TensorInfo (the same view core.formats gives of a file)."""
    return [
        TensorInfo(name=arg.name, dtype=_ort_dtype(arg.type), shape=list(arg.shape))
        for arg in session.get_inputs()
    ]


def eval_batch_size(inputs: list[TensorInfo], task: TaskSpec | None = None) -> int:
    """Rows per run for the metric: the model's pinned batch dim, else DEFAULT_EVAL_BATCH."""
    return pinned_batch_size(inputs, task) or DEFAULT_EVAL_BATCH


def file_size(path: Path) -> int:
    """Bytes on disk of the model, its external data files included."""
    return model_size_bytes(path)


def count_parameters(path: Path) -> int:
    """Elements of the model's weight initializers (see core.formats.count_parameters)."""
    return _count_model_parameters(load_model(path))


def time_sessions(
    sessions: Sequence[ort.InferenceSession], feeds: Feeds, settings: MeasureSettings
) -> list[list[float]]:
    """Per-session run times in ms, interleaved (A B, B A, ...) after each warms up: the
    project's one timing rule (core.timing), so machine noise falls on every model alike."""
    return time_interleaved(
        [_runner(session, feeds) for session in sessions], settings.warmup_runs, settings.runs
    )


def _runner(session: ort.InferenceSession, feeds: Feeds) -> Callable[[], object]:
    return lambda: session.run(None, feeds)


def compare_to_original(
    original: Path,
    candidates: Sequence[Path],
    feeds: Feeds,
    batch_sizes: Sequence[int],
    settings: MeasureSettings,
    device: str,
    check_cancelled: CancelCheck | None = None,
    layout: FeedLayout | None = None,
) -> list[list[SpeedComparison]]:
    """Each candidate against the original at each batch size (rows taken from `feeds`,
    fed through `layout`), timed interleaved with the original and a second session of
    it, which measures the noise tolerance (core.timing). Result: per candidate, one
    comparison per batch size."""
    layout = layout or FeedLayout()
    base, copy = open_session(original, settings, device), open_session(original, settings, device)
    others = [open_session(path, settings, device) for path in candidates]
    per_batch: list[list[SpeedComparison]] = []
    for rows in batch_sizes:
        if check_cancelled is not None:
            check_cancelled()
        batch = layout.to_model(take_rows(feeds, rows))
        per_batch.append(
            compare_runs(
                rows,
                _runner(base, batch),
                _runner(copy, batch),
                [_runner(session, batch) for session in others],
                settings.warmup_runs,
                settings.runs,
            )
        )
    return [[comparisons[i] for comparisons in per_batch] for i in range(len(candidates))]


def compare_under_sessions(
    original: Path,
    candidates: Sequence[Path],
    feeds: Feeds,
    batch_sizes: Sequence[int],
    sessions: Sequence[RunSettings],
    settings: MeasureSettings,
    check_cancelled: CancelCheck | None = None,
    layout: FeedLayout | None = None,
) -> list[list[SpeedComparison]]:
    """`compare_to_original` under deployment sessions: per session (its threads, its
    spinning), each candidate against the original at each batch size, timed interleaved
    with the original and a second session of it; sessions left with their runtime's
    defaults are timed in blocks (core.timing.SPINNING_BLOCK), so that one session does
    not pay for the other's spinning. `settings` gives the warm-up and timed runs.
    Result: per candidate, one comparison per session and batch size (threads set)."""
    layout = layout or FeedLayout()
    per_candidate: list[list[SpeedComparison]] = [[] for _ in candidates]
    for session in sessions:
        base, copy = _deployed(original, session), _deployed(original, session)
        others = [_deployed(path, session) for path in candidates]
        block = SPINNING_BLOCK if session.runtime_defaults else 1
        for rows in batch_sizes:
            if check_cancelled is not None:
                check_cancelled()
            batch = layout.to_model(take_rows(feeds, rows))
            compared = compare_runs(
                rows,
                _runner(base, batch),
                _runner(copy, batch),
                [_runner(other, batch) for other in others],
                settings.warmup_runs,
                settings.runs,
                block,
                threads=session.threads,
            )
            for index, comparison in enumerate(compared):
                per_candidate[index].append(comparison)
    return per_candidate


def _deployed(path: Path, session: RunSettings) -> ort.InferenceSession:
    """A session opened as the deployment target opens it (core.runtimes.ort_runtime)."""
    try:
        return ort.InferenceSession(
            str(path),
            ort_runtime.session_options(session),
            providers=ort_runtime.providers(session),
        )
    except Exception as exc:
        raise StepFailed(f"ONNX Runtime cannot load {path.name}: {short_reason(exc)}") from exc


def summarize_latency(times_ms: list[float], batch_size: int) -> Latency:
    return Latency(
        batch_size=batch_size,
        median_ms=float(np.median(times_ms)),
        p95_ms=float(np.percentile(times_ms, 95)),
        runs=len(times_ms),
    )


def measure_latency(
    path: Path, feeds_for_batch: Feeds, batch_size: int, settings: MeasureSettings, device: str
) -> Latency:
    """Median and p95 latency of one run on `feeds_for_batch` (which hold `batch_size` rows)."""
    session = open_session(path, settings, device)
    (times_ms,) = time_sessions([session], feeds_for_batch, settings)
    return summarize_latency(times_ms, batch_size)


def compare_latency(
    paths: list[Path],
    feeds_for_batch: Feeds,
    batch_size: int,
    settings: MeasureSettings,
    device: str,
) -> list[Latency]:
    """Latency of several models timed interleaved in one process, for fair ratios."""
    sessions = [open_session(path, settings, device) for path in paths]
    return [
        summarize_latency(times, batch_size)
        for times in time_sessions(sessions, feeds_for_batch, settings)
    ]


def compute_outputs(
    session: ort.InferenceSession,
    feeds: Feeds,
    output_name: str,
    batch_size: int,
    check_cancelled: CancelCheck | None = None,
    *,
    layout: FeedLayout | None = None,
    sample_axis: int = 0,
) -> np.ndarray:
    """One output of an ONNX Runtime session over all samples (see collect_outputs)."""

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        (output,) = session.run([output_name], batch)
        return np.asarray(output)

    return collect_outputs(
        run,
        feeds,
        batch_size,
        layout=layout,
        sample_axis=sample_axis,
        check_cancelled=check_cancelled,
        name=output_name,
    )


def collect_outputs(
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    feeds: Feeds,
    batch_size: int,
    *,
    layout: FeedLayout | None = None,
    sample_axis: int = 0,
    check_cancelled: CancelCheck | None = None,
    name: str = "output",
) -> np.ndarray:
    """One output over all samples, `run` (a model's feed -> that output) called batch by
    batch, concatenated along the output's sample axis, which comes back as axis 0.

    `feeds` hold the per-sample inputs with samples on axis 0; `layout` turns a batch
    into what the model takes (the task's sample axes, inputs fed whole). A short last
    batch is padded by repeating rows, since a model with a pinned batch dim cannot run
    it; the padding's outputs are dropped.
    """
    layout = layout or FeedLayout()
    chunks: list[np.ndarray] = []
    for batch in iter_batches(feeds, batch_size):
        if check_cancelled is not None:
            check_cancelled()
        rows = sample_count(batch)
        if rows < batch_size:
            batch = take_rows(batch, batch_size)
        array = np.asarray(run(layout.to_model(batch)))
        if array.ndim <= sample_axis:
            raise IncompatibleData(
                f"output {name!r} of shape {list(array.shape)} has no axis {sample_axis}"
                " (task.output_sample_axis)"
            )
        chunks.append(np.moveaxis(array, sample_axis, 0)[:rows])
    return np.concatenate(chunks, axis=0)


def score(
    task: TaskSpec,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray,
) -> tuple[MetricName, float]:
    """The metric the targets judge (core.metrics.judged_metric): against the labels
    when the task uses them and the data has them, else against the reference (the
    original model's outputs on the same rows)."""
    labels = labels if task.kind != "embedding" else None
    name = judged_metric(task, labels is not None)
    return name, compute_metric(name, task, outputs, labels, reference)


def score_all(
    task: TaskSpec,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray,
) -> dict[str, float]:
    """Every metric that applies to the task and data (core.metrics.reported_metrics)."""
    labels = labels if task.kind != "embedding" else None
    return {
        name: compute_metric(name, task, outputs, labels, reference)
        for name in reported_metrics(task, labels is not None)
    }


def measure_model_with_outputs(
    path: Path,
    eval_arrays: Mapping[str, np.ndarray],
    task: TaskSpec,
    batch_size: int | Sequence[int],
    settings: MeasureSettings,
    device: str,
    reference_outputs: np.ndarray | None = None,
    check_cancelled: CancelCheck | None = None,
    score_rows: np.ndarray | None = None,
) -> tuple[ModelMetrics, np.ndarray]:
    """measure_model, also returning the model's metric output on every eval row.

    Pass the original model's outputs as `reference_outputs` to every later model, so
    the original runs over the eval data once. Without them the model is its own
    reference (the original's agreement with itself is measured as 1.0). `score_rows`
    (row indices) limits the metrics to those rows: the held-out rows of the job's split.
    """
    session = open_session(path, settings, device)
    inputs = session_inputs(session)
    feeds = model_feeds(eval_arrays, inputs, task)
    layout = feed_layout(eval_arrays, inputs, task)
    output_name = task.metric_output([meta.name for meta in session.get_outputs()])
    outputs = compute_outputs(
        session,
        feeds,
        output_name,
        eval_batch_size(inputs, task),
        check_cancelled,
        layout=layout,
        sample_axis=task.output_sample_axis,
    )
    if outputs.dtype.kind == "f" and not np.all(np.isfinite(outputs)):
        raise StepFailed(
            f"{path.name} produced non-finite values in output {output_name!r} on the eval data"
        )
    reference = outputs if reference_outputs is None else reference_outputs
    if reference.shape != outputs.shape:
        raise StepFailed(
            f"the model's output {output_name!r} has shape {outputs.shape}, the original's "
            f"{reference.shape}: the two cannot be compared"
        )
    labels = eval_arrays.get(task.labels) if task.kind != "embedding" else None
    rows_scored = np.arange(outputs.shape[0]) if score_rows is None else score_rows
    scored_labels = None if labels is None else np.asarray(labels)[rows_scored]
    every = score_all(task, outputs[rows_scored], scored_labels, reference[rows_scored])
    metric_name = judged_metric(task, scored_labels is not None)

    latencies = []
    for rows in latency_batch_sizes(inputs, batch_size, task):
        if check_cancelled is not None:
            check_cancelled()
        batch = layout.to_model(take_rows(feeds, rows))
        (times_ms,) = time_sessions([session], batch, settings)
        latencies.append(summarize_latency(times_ms, rows))

    metrics = ModelMetrics(
        size_bytes=file_size(path),
        parameters=count_parameters(path),
        latency=latencies,
        metric_name=metric_name,
        metric_value=every[metric_name],
        metric_rows=len(rows_scored),
        metrics=every,
        metric_output=output_name,
    )
    return metrics, outputs


# Other outputs are compared on the first eval rows whose outputs fit in this many bytes
# (a detector's second map over a whole eval set could take gigabytes).
OTHER_OUTPUTS_MAX_BYTES = 64 * 1024**2
# An element agrees when within this share of the reference's largest magnitude.
OTHER_OUTPUT_TOLERANCE = 0.01

# per other output: its value on each of the first batches, as the model returned it
OutputSnapshot = dict[str, list[np.ndarray]]


def capture_other_outputs(
    path: Path,
    eval_arrays: Mapping[str, np.ndarray],
    task: TaskSpec,
    settings: MeasureSettings,
    device: str,
    check_cancelled: CancelCheck | None = None,
    max_bytes: int = OTHER_OUTPUTS_MAX_BYTES,
) -> OutputSnapshot:
    """Every output the metric does not read, on the first eval batches (as many as fit
    in `max_bytes`), batch by batch as the model returns them: no sample axis is assumed
    (a recurrent state output puts the batch on axis 1)."""
    session = open_session(path, settings, device)
    names = [meta.name for meta in session.get_outputs()]
    others = [name for name in names if name != task.metric_output(names)]
    if not others:
        return {}
    inputs = session_inputs(session)
    layout = feed_layout(eval_arrays, inputs, task)
    snapshot: OutputSnapshot = {name: [] for name in others}
    held = 0
    batch_size = eval_batch_size(inputs, task)
    for batch in iter_batches(model_feeds(eval_arrays, inputs, task), batch_size):
        if check_cancelled is not None:
            check_cancelled()
        if sample_count(batch) < batch_size:
            break  # padding would compare rows that are not there
        values = session.run(others, layout.to_model(batch))
        for name, value in zip(others, values, strict=True):
            snapshot[name].append(np.asarray(value))
        held += sum(np.asarray(value).nbytes for value in values)
        if held >= max_bytes:
            break
    return snapshot


def compare_other_outputs(
    reference: OutputSnapshot, candidate: OutputSnapshot, rows_per_batch: int
) -> dict[str, OutputComparison]:
    """Each other output against the original's, over the batches both captured (pure)."""
    compared: dict[str, OutputComparison] = {}
    for name, expected in reference.items():
        actual = candidate.get(name)
        if not actual or not expected:
            continue
        pairs = list(zip(expected, actual, strict=False))
        if any(a.shape != b.shape for a, b in pairs):
            shapes = {tuple(a.shape) for a, _ in pairs} | {tuple(b.shape) for _, b in pairs}
            raise StepFailed(
                f"output {name!r} changed shape ({sorted(shapes)}): the model no longer "
                "computes what the original did"
            )
        diffs = np.concatenate(
            [np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(-1) for a, b in pairs]
        )
        scale = max((float(np.max(np.abs(a))) for a, _ in pairs if a.size), default=0.0)
        exact = all(a.dtype.kind in "biu" for a, _ in pairs)
        tolerance = 0.0 if exact else OTHER_OUTPUT_TOLERANCE * max(scale, 1e-12)
        compared[name] = OutputComparison(
            rows=len(pairs) * rows_per_batch,
            max_abs_diff=float(diffs.max()) if diffs.size else 0.0,
            mean_abs_diff=float(diffs.mean()) if diffs.size else 0.0,
            agreement=float(np.mean(diffs <= tolerance)) if diffs.size else 1.0,
        )
    return compared


def measure_model(
    path: Path,
    eval_arrays: Mapping[str, np.ndarray],
    task: TaskSpec,
    batch_size: int,
    settings: MeasureSettings,
    device: str,
    reference_outputs: np.ndarray | None = None,
) -> ModelMetrics:
    """Size, parameters, latency at batch 1 and `batch_size`, and the task metric."""
    metrics, _ = measure_model_with_outputs(
        path, eval_arrays, task, batch_size, settings, device, reference_outputs
    )
    return metrics


def latency_batch_sizes(
    inputs: list[TensorInfo], batch_sizes: int | Sequence[int], task: TaskSpec | None = None
) -> list[int]:
    """The deployment batch sizes (an int n means 1 and n), ascending; only the pinned
    size for a model that pins one (on the task's sample axes)."""
    pinned = pinned_batch_size(inputs, task)
    if pinned:
        return [pinned]
    sizes = {1, batch_sizes} if isinstance(batch_sizes, int) else set(batch_sizes)
    return sorted(sizes)


def latency_at(metrics: ModelMetrics, batch_size: int) -> Latency:
    for latency in metrics.latency:
        if latency.batch_size == batch_size:
            return latency
    raise StepFailed(f"no latency was measured at batch size {batch_size}")


def _ort_dtype(ort_type: str) -> str:
    # ONNX Runtime names types "tensor(float)"; map to numpy names as core.formats does.
    names = {
        "float": "float32",
        "double": "float64",
        "float16": "float16",
        "int8": "int8",
        "int16": "int16",
        "int32": "int32",
        "int64": "int64",
        "uint8": "uint8",
        "uint16": "uint16",
        "uint32": "uint32",
        "uint64": "uint64",
        "bool": "bool",
    }
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return names.get(inner, inner)
