"""What a job report holds: the job as stored (`JobRecord`, the input) and the report
built from it (`Report`, the output, served as JSON and rendered as HTML).

Plot data are numbers, not pictures: the JSON form carries them for machines and
`core.report.plots` draws them for people.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from core.results import (
    EvaluationRecord,
    Note,
    Outcome,
    OutputComparison,
    PipelineResult,
    SpeedAtBatch,
    TargetCheck,
)
from core.spec import JobSpec

# --- the input ------------------------------------------------------------------------------


class ProgressEvent(BaseModel):
    """One progress event of the job's latest attempt (message and data as stored)."""

    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class JobRecord(BaseModel):
    """The job as the service stores it, plus what a report shows about its inputs."""

    id: str
    state: str
    progress: float = 0.0
    current_step: str | None = None
    attempt: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: JobSpec
    result: PipelineResult | None = None
    error_code: str | None = None
    error_message: str | None = None
    # the uploaded model's file name (user input: rendered escaped)
    model_filename: str | None = None
    # the latest attempt's progress events, oldest first: what a job without a result
    # has measured so far (the original's metrics, finished steps)
    events: list[ProgressEvent] = Field(default_factory=list)


# --- plots ----------------------------------------------------------------------------------


class CandidatePoint(BaseModel):
    name: str
    size_bytes: int
    latency_ms: float | None
    metric_value: float
    is_input: bool = False
    chosen: bool = False


class UnmeasuredCandidate(BaseModel):
    name: str
    status: str  # failed, duplicate, skipped
    note: str | None = None


class CandidatesPlot(BaseModel):
    """Auto quantization: every measured candidate's metric against size and latency
    (points numbered from 1 in this order), and the candidates that were not measured."""

    kind: Literal["candidates"] = "candidates"
    title: str
    metric_name: str
    latency_batch_size: int | None
    points: list[CandidatePoint]
    unmeasured: list[UnmeasuredCandidate] = Field(default_factory=list)


class RankedNode(BaseModel):
    name: str
    op_type: str | None = None
    score: float


class RankingPlot(BaseModel):
    """Per-node sensitivity: the error each node adds when quantized, largest first."""

    kind: Literal["node_sensitivity"] = "node_sensitivity"
    title: str
    score_label: str
    nodes: list[RankedNode]


class Curve(BaseModel):
    label: str
    x: list[float]
    y: list[float]


class CurvesPlot(BaseModel):
    """Per-layer sensitivity curves: the metric with one layer pruned to each sparsity."""

    kind: Literal["layer_sensitivity"] = "layer_sensitivity"
    title: str
    x_label: str
    y_label: str
    baseline: float | None = None
    curves: list[Curve]


class LayerBar(BaseModel):
    layer: str
    value: float
    target: float | None = None
    # written at the bar's end, e.g. "8 of 16 removed" (None: the value alone)
    note: str | None = None


class LayerBarsPlot(BaseModel):
    """Sparsity per layer: zero weights (unstructured, N:M) or removed channels."""

    kind: Literal["layer_sparsity"] = "layer_sparsity"
    title: str
    value_label: str
    layers: list[LayerBar]


class TrialPoint(BaseModel):
    number: int
    metric: float
    costs: dict[str, float]
    on_front: bool = False
    chosen: bool = False


class ParetoPlot(BaseModel):
    """Architecture search: every completed trial's metric against each cost."""

    kind: Literal["pareto"] = "pareto"
    title: str
    metric_name: str
    costs: list[str]
    trials: list[TrialPoint]


class Series(BaseModel):
    label: str
    epochs: list[int]
    eval_metric: list[float | None]
    train_loss: list[float | None]


class TrainingPlot(BaseModel):
    """Training curves per epoch (fine-tuning, QAT, distillation)."""

    kind: Literal["training"] = "training"
    title: str
    metric_name: str
    series: list[Series]
    best_epoch: int | None = None


class FallbackPoint(BaseModel):
    nodes: int  # kept in float32
    metric_drop: float  # in the metric target's units (0: the original's metric)
    metric: float | None = None
    unit: str | None = None  # what this step added (None: the base, all nodes INT8)


class FallbackCurvePlot(BaseModel):
    """Quantize auto's FP32 fallback: the metric drop against the nodes kept in float32,
    each accepted step (the curve), the trials it did not keep, the set chosen, and the
    target's limit."""

    kind: Literal["fallback_curve"] = "fallback_curve"
    title: str
    metric_name: str
    drop_label: str  # "absolute drop" or "relative drop"
    limit: float | None = None
    curve: list[FallbackPoint]
    trials: list[FallbackPoint] = Field(default_factory=list)  # not kept
    chosen: FallbackPoint | None = None


PlotData = Annotated[
    CandidatesPlot
    | RankingPlot
    | CurvesPlot
    | LayerBarsPlot
    | ParetoPlot
    | TrainingPlot
    | FallbackCurvePlot,
    Field(discriminator="kind"),
]


# --- the report -----------------------------------------------------------------------------


class LatencyCell(BaseModel):
    batch_size: int
    median_ms: float
    p95_ms: float


class MetricsRow(BaseModel):
    """One model of the before/after table."""

    label: str
    role: Literal["original", "step", "final"]
    size_bytes: int
    size_ratio: float
    parameters: int
    # one cell per deployment batch size (JobSection.batch_sizes), None where unmeasured
    latency: list[LatencyCell | None] = Field(default_factory=list)
    metric_name: str
    metric_value: float
    metric_change: float
    # every metric that applies to the task (the judged one included)
    metrics: dict[str, float] = Field(default_factory=dict)
    # outputs the metric does not read, against the original's
    other_outputs: dict[str, OutputComparison] = Field(default_factory=dict)


class Fact(BaseModel):
    label: str
    value: str


class StepSection(BaseModel):
    index: int
    method: str
    label: str
    duration_s: float | None
    facts: list[Fact] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    plots: list[PlotData] = Field(default_factory=list)


class VerdictSection(BaseModel):
    targets_met: bool
    checks: list[TargetCheck]
    size_ratio: float
    latency_ratio: float
    metric_change: float
    outcome: Outcome | None = None
    outcome_reason: str = ""
    speed: list[SpeedAtBatch] = Field(default_factory=list)
    # the eval rows the verdict and every reported metric were measured on
    evaluation: EvaluationRecord | None = None
    notes: list[Note] = Field(default_factory=list)


class TargetSection(BaseModel):
    """One deployment target's model: chosen in its runtime, judged on the held-out rows."""

    name: str
    sessions: list[str]
    chosen: str
    chosen_reason: str
    outcome: Outcome | None
    outcome_reason: str
    size_bytes: int
    size_ratio: float  # vs the uploaded model
    metric_value: float
    metric_change: float
    # per batch size and thread count: the target's latency, its ratio to the same
    # runtime's original and to the ONNX Runtime original
    speed: list[SpeedAtBatch]
    vs_onnxruntime: list[SpeedAtBatch]
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    artifacts: list[str] = Field(default_factory=list)


class JobSection(BaseModel):
    id: str
    state: str
    progress: float
    current_step: str | None
    last_message: str | None
    attempt: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    model_id: str
    model_filename: str | None
    task: str
    batch_size: int
    # the deployment batch sizes latency is judged at (the comparison's columns)
    batch_sizes: list[int] = Field(default_factory=list)
    steps: list[str]
    targets: dict[str, Any]


class ErrorSection(BaseModel):
    code: str
    message: str


class Report(BaseModel):
    """A job's report: complete when the job succeeded, what is known so far otherwise."""

    job: JobSection
    complete: bool
    error: ErrorSection | None = None
    comparison: list[MetricsRow] = Field(default_factory=list)
    verdict: VerdictSection | None = None
    targets: list[TargetSection] = Field(default_factory=list)
    steps: list[StepSection] = Field(default_factory=list)
    # what the report could not show, and why (e.g. a step's details it cannot read)
    notes: list[str] = Field(default_factory=list)
