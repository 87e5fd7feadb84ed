"""What the engine returns: measured metrics per model, per step, and the verdict.

Everything here is a measured value (never assumed); these models are stored as JSON
with the job and served to clients as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Latency(BaseModel):
    batch_size: int
    median_ms: float
    p95_ms: float
    runs: int
    # the session's thread count, where a deployment target measures several
    threads: int | None = None


class OutputComparison(BaseModel):
    """An output the metric does not read, against the original's on the same rows."""

    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    # the share of elements within 1% of the original's largest magnitude (exactly equal
    # for integer and boolean outputs)
    agreement: float


class ModelMetrics(BaseModel):
    size_bytes: int
    parameters: int
    latency: list[Latency]
    # the metric the targets judge (core.metrics; higher is better) and its value
    metric_name: str
    metric_value: float
    # Change vs the original model (metric_value - original); 0 for the original itself.
    metric_change: float = 0.0
    # how many eval rows the metric was measured on (the job's held-out rows)
    metric_rows: int | None = None
    # the same metric on the selection rows, which the steps chose on: the gap to
    # metric_value is how much the choices flattered themselves
    selection_metric_value: float | None = None
    # every metric that applies to the task, the judged one included (cer and
    # relative_rmse are lower-is-better; the rest higher)
    metrics: dict[str, float] = Field(default_factory=dict)
    # the output the metric read
    metric_output: str | None = None
    # every other output, compared with the original's on the first eval rows
    other_outputs: dict[str, OutputComparison] = Field(default_factory=dict)


class StepResult(BaseModel):
    index: int
    method: str
    # measured on the held-out eval rows, like the verdict
    metrics: ModelMetrics
    duration_s: float
    # Method-specific facts, e.g. the quantization mode, op types, opset upgrade.
    details: dict[str, Any] = Field(default_factory=dict)
    # Why the step left the model as it was (None: it changed it).
    unchanged_reason: str | None = None
    # The step's output judged like the verdict judges the final model, on the held-out
    # rows: the metric checks only (its latency was timed alone, not interleaved).
    metric_checks: list[TargetCheck] = Field(default_factory=list)


TargetName = Literal[
    "max_metric_drop",
    "default_metric_guard",
    "min_speedup",
    "max_latency_ms",
    "max_size_bytes",
    "not_slower",
]
# What a finished job came to, for people and for CI gates (distinct from its state):
# improved: smaller and/or faster, every target met; unchanged: the result is the input,
# or nothing measurable changed; targets_missed: some check failed (each is listed);
# failed / cancelled: the job has no result (set on the job's record, not here).
Outcome = Literal["improved", "unchanged", "targets_missed", "failed", "cancelled"]


class TargetCheck(BaseModel):
    target: TargetName
    limit: float
    measured: float
    met: bool
    # the deployment batch size a latency check holds at (None: not a latency check)
    batch_size: int | None = None
    # and the thread count, for a deployment target measured at several
    threads: int | None = None
    # how the limit is meant, when it is not plain ("relative drop", the tolerance)
    note: str | None = None


class SpeedAtBatch(BaseModel):
    """The final model against the original at one deployment batch size, timed
    interleaved (core.timing): ratio of lower quartiles, below 1 is faster."""

    batch_size: int
    ratio: float
    tolerance: float
    median_ms: float
    original_median_ms: float
    faster: bool
    slower: bool
    threads: int | None = None


class Verdict(BaseModel):
    targets_met: bool
    checks: list[TargetCheck]
    # Speed/size/metric of the final model relative to the original, for people.
    size_ratio: float
    # at the job's batch_size (every deployment batch size: `speed`)
    latency_ratio: float
    metric_change: float
    outcome: Outcome = "targets_missed"
    outcome_reason: str = ""
    speed: list[SpeedAtBatch] = Field(default_factory=list)
    # the eval rows the verdict's metric was measured on (the held-out rows)
    metric_rows: int | None = None


class Note(BaseModel):
    """Something the user should know about how a figure was obtained."""

    code: str
    message: str


class EvaluationRecord(BaseModel):
    """Which eval rows chose and which judged (core.evaluation), and what each served."""

    rows: int
    selection_rows: int
    held_out_rows: int
    held_out_fraction: float
    seed: int
    split: bool
    note: str | None = None
    # the original's metric on the selection rows (what every step's choices compared to)
    original_selection_metric: float | None = None


class TargetResult(BaseModel):
    """One deployment target's model (core.deployment): chosen among candidates in its
    runtime, measured there, judged by the verdict's rules on the held-out rows."""

    name: str  # e.g. "openvino-cpu"
    runtime: str
    device: str
    # each session latency was measured under, e.g. "cpu, 2 thread(s), runtime defaults"
    sessions: list[str]
    chosen: str
    chosen_reason: str
    # the job's original model in this runtime (FP32), and the target's model
    original: ModelMetrics
    final: ModelMetrics
    verdict: Verdict
    # the target's model against the ONNX Runtime original under the same sessions:
    # what switching runtimes buys
    vs_onnxruntime: list[SpeedAtBatch] = Field(default_factory=list)
    # every candidate tried, measured on the selection rows
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    # the job's artifacts holding this target's model, and the properties to open it
    # with (OpenVINO: e.g. {"INFERENCE_PRECISION_HINT": "f32"}, as it was measured)
    artifacts: list[str] = Field(default_factory=list)
    open_config: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class RegisteredModel(BaseModel):
    """The model version the job's final model was registered as (spec `register`)."""

    registry: str  # "mlflow"
    tracking_uri: str
    name: str
    version: int
    # the MLflow run holding the job's metrics, params, tags and report
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class PipelineResult(BaseModel):
    original: ModelMetrics
    steps: list[StepResult]
    final: ModelMetrics
    verdict: Verdict
    manifest: dict[str, Any]
    evaluation: EvaluationRecord | None = None
    notes: list[Note] = Field(default_factory=list)
    # one per deployment target the spec names (empty: the ONNX Runtime result above)
    targets: list[TargetResult] = Field(default_factory=list)
    # where the final model was registered (spec `register`); a failure to register is a
    # `registry_failed` note instead
    registered: RegisteredModel | None = None
