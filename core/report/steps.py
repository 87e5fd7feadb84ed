"""A step's section of the report: the facts a person wants first and the plot data,
read from the step's `details` (whose keys each step documents in docs/api.md).

Details are parsed with lenient pydantic models (unknown keys ignored): a detail this
module cannot read costs its plot, named in the section's notes, never the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from core.report.model import (
    CandidatePoint,
    CandidatesPlot,
    Curve,
    CurvesPlot,
    Fact,
    FallbackCurvePlot,
    FallbackPoint,
    LayerBar,
    LayerBarsPlot,
    ParetoPlot,
    PlotData,
    RankedNode,
    RankingPlot,
    Series,
    StepSection,
    TrainingPlot,
    TrialPoint,
    UnmeasuredCandidate,
)

Details = dict[str, Any]
PlotBuilder = Callable[[Details], PlotData | None]
FactBuilder = Callable[[Details], list[Fact]]


# --- lenient views of the details -----------------------------------------------------------


class _CandidateLatency(BaseModel):
    batch_size: int
    median_ms: float


class _CandidateRow(BaseModel):
    name: str
    status: str
    size_bytes: int | None = None
    metric_name: str | None = None
    metric_value: float | None = None
    latency: list[_CandidateLatency] = []
    chosen: bool = False
    note: str | None = None


class _RankedNode(BaseModel):
    node: str
    op_type: str | None = None
    score: float


class _Sensitivity(BaseModel):
    base: str | None = None
    error: str | None = None
    top: list[_RankedNode] = []


class _FallbackTrial(BaseModel):
    nodes: int
    metric: float | None = None
    metric_drop: float | None = None
    accepted: bool = False
    unit: str | None = None


class _MetricCriterion(BaseModel):
    limit: float | None = None
    mode: str | None = None


class _Fallback(BaseModel):
    ran: bool = False
    metric_name: str | None = None
    metric_criterion: _MetricCriterion | None = None
    curve: list[_FallbackTrial] = []
    trials: list[_FallbackTrial] = []
    nodes_to_exclude: list[str] = []
    metric_with_nodes_kept: float | None = None
    metric_drop_with_nodes_kept: float | None = None


class _LayerRow(BaseModel):
    layer: str
    sparsity: float
    target_sparsity: float | None = None


class _PruneCurves(BaseModel):
    baseline_metric: float | None = None
    curves: dict[str, list[tuple[float, float]]] = {}


class _Epoch(BaseModel):
    epoch: int
    train_loss: float | None = None
    eval_metric: float | None = None


class _Trial(BaseModel):
    number: int
    state: str
    metric: float | None = None
    costs: dict[str, float] | None = None


class _Objective(BaseModel):
    costs: list[str] = []  # pareto
    cost: str | None = None  # weighted
    max_latency_ms: float | None = None  # constrained
    max_params: int | None = None
    max_size_bytes: int | None = None

    def shown(self) -> list[str]:
        """The costs the front is drawn against (as core.search.objective shows them)."""
        if self.costs:
            return self.costs
        if self.cost:
            return [self.cost]
        limits = {
            "latency_ms": self.max_latency_ms,
            "parameters": self.max_params,
            "size_bytes": self.max_size_bytes,
        }
        return [cost for cost, limit in limits.items() if limit is not None] or ["latency_ms"]


_candidates = TypeAdapter(list[_CandidateRow])
_layers = TypeAdapter(list[_LayerRow])
_epochs = TypeAdapter(list[_Epoch])
_trials = TypeAdapter(list[_Trial])
_channels = TypeAdapter(dict[str, tuple[int, int]])


# --- plots ----------------------------------------------------------------------------------


def candidates_plot(details: Details) -> CandidatesPlot | None:
    """Auto quantization's candidates table (the input's row included)."""
    if "candidates" not in details:
        return None
    sizes = details.get("batch_sizes")
    # the largest deployment batch size (older details name one decision batch size)
    batch = max(sizes) if isinstance(sizes, list) and sizes else details.get("decision_batch_size")
    rows = _candidates.validate_python(details["candidates"])
    points, unmeasured = [], []
    for row in rows:
        if row.status != "measured" or row.size_bytes is None or row.metric_value is None:
            unmeasured.append(UnmeasuredCandidate(name=row.name, status=row.status, note=row.note))
            continue
        latency = next((lat for lat in row.latency if lat.batch_size == batch), None)
        if latency is None and row.latency:
            latency = row.latency[-1]
        points.append(
            CandidatePoint(
                name=row.name,
                size_bytes=row.size_bytes,
                latency_ms=latency.median_ms if latency else None,
                metric_value=row.metric_value,
                is_input=row.name == "input",
                chosen=row.chosen,
            )
        )
    if not points:
        return None
    return CandidatesPlot(
        title="Candidates: metric against size and latency",
        metric_name=next((r.metric_name for r in rows if r.metric_name), "metric"),
        latency_batch_size=batch if isinstance(batch, int) else None,
        points=points,
        unmeasured=unmeasured,
    )


def node_sensitivity_plot(details: Details) -> RankingPlot | None:
    """Auto quantization's node ranking (present when nodes had to be kept in FP32)."""
    if not isinstance(details.get("sensitivity"), dict):
        return None
    ranking = _Sensitivity.model_validate(details["sensitivity"])
    if not ranking.top:
        return None
    return RankingPlot(
        title=f"Most sensitive nodes when quantized (base {ranking.base or '?'})",
        score_label=ranking.error or "added error",
        nodes=[RankedNode(name=n.node, op_type=n.op_type, score=n.score) for n in ranking.top],
    )


def fallback_curve_plot(details: Details) -> FallbackCurvePlot | None:
    """Auto quantization's FP32 fallback: metric drop against nodes kept in float32."""
    if not isinstance(details.get("fallback"), dict):
        return None
    fallback = _Fallback.model_validate(details["fallback"])
    if not fallback.ran or not fallback.curve:
        return None
    criterion = fallback.metric_criterion or _MetricCriterion()
    curve = [
        FallbackPoint(nodes=p.nodes, metric_drop=p.metric_drop, metric=p.metric, unit=p.unit)
        for p in fallback.curve
        if p.metric_drop is not None
    ]
    trials = [
        FallbackPoint(nodes=t.nodes, metric_drop=t.metric_drop, metric=t.metric, unit=t.unit)
        for t in fallback.trials
        if not t.accepted and t.metric_drop is not None
    ]
    chosen = None
    if fallback.nodes_to_exclude and fallback.metric_drop_with_nodes_kept is not None:
        chosen = FallbackPoint(
            nodes=len(fallback.nodes_to_exclude),
            metric_drop=fallback.metric_drop_with_nodes_kept,
            metric=fallback.metric_with_nodes_kept,
        )
    return FallbackCurvePlot(
        title="FP32 fallback: metric drop against the nodes kept in float32",
        metric_name=fallback.metric_name or "metric",
        drop_label=f"{criterion.mode or 'absolute'} drop",
        limit=criterion.limit,
        curve=curve,
        trials=trials,
        chosen=chosen,
    )


def layer_sensitivity_plot(details: Details) -> CurvesPlot | None:
    """Pruning's sensitivity sweep: the metric with each layer alone pruned."""
    if not isinstance(details.get("sensitivity"), dict):
        return None
    sweep = _PruneCurves.model_validate(details["sensitivity"])
    if not sweep.curves:
        return None
    return CurvesPlot(
        title="Layer sensitivity: metric with one layer pruned",
        x_label=(
            "fraction of the layer's output channels removed"
            if _structured(details)
            else "fraction of the layer's weights set to zero"
        ),
        y_label=str(details.get("eval_metric_name") or "metric"),
        baseline=sweep.baseline_metric,
        curves=[
            Curve(label=layer, x=[p[0] for p in points], y=[p[1] for p in points])
            for layer, points in sweep.curves.items()
        ],
    )


def layer_sparsity_plot(details: Details) -> LayerBarsPlot | None:
    """Removed channels per layer (structured), else zero weights per layer."""
    if isinstance(details.get("channels"), dict):
        channels = _channels.validate_python(details["channels"])
        targets = details.get("layer_sparsity") or {}
        # structured pruning removes whole channels: the weights left are not zero, so a
        # weight sparsity would read 0 here; the channels removed are what changed
        return LayerBarsPlot(
            title="Channels removed per layer",
            value_label="fraction of the layer's output channels removed",
            layers=[
                LayerBar(
                    layer=name,
                    value=1.0 - after / before if before else 0.0,
                    target=targets.get(name),
                    note=f"{before - after} of {before} removed",
                )
                for name, (before, after) in channels.items()
            ],
        )
    if "layers" not in details:
        return None
    rows = _layers.validate_python(details["layers"])
    if not rows:
        return None
    return LayerBarsPlot(
        title="Sparsity per layer",
        value_label="fraction of the layer's weights that are zero",
        layers=[LayerBar(layer=r.layer, value=r.sparsity, target=r.target_sparsity) for r in rows],
    )


def training_plot(details: Details) -> TrainingPlot | None:
    """Per-epoch history (fine-tuning, QAT, distillation; distillation's label-only
    comparison as a second series)."""
    if not isinstance(details.get("epochs"), list):
        return None
    history = _epochs.validate_python(details["epochs"])
    if not history:
        return None
    series = [_series(_training_label(details), history)]
    label_only = details.get("label_only")
    if isinstance(label_only, dict) and isinstance(label_only.get("epochs"), list):
        series.append(_series("labels only", _epochs.validate_python(label_only["epochs"])))
    best = details.get("best_epoch")
    return TrainingPlot(
        title="Training per epoch",
        metric_name=str(details.get("eval_metric_name") or "metric"),
        series=series,
        best_epoch=best if isinstance(best, int) else None,
    )


def _training_label(details: Details) -> str:
    if details.get("mode") == "qat":
        return "QAT"
    if "student" in details:
        return "distilled"
    return "fine-tuning"


def _series(label: str, history: list[_Epoch]) -> Series:
    return Series(
        label=label,
        epochs=[e.epoch for e in history],
        eval_metric=[e.eval_metric for e in history],
        train_loss=[e.train_loss for e in history],
    )


def pareto_plot(details: Details) -> ParetoPlot | None:
    """The search's completed trials, the front and the chosen trial."""
    if "trials" not in details:
        return None
    trials = [
        t
        for t in _trials.validate_python(details["trials"])
        if t.state == "complete" and t.metric is not None and t.costs
    ]
    if not trials:
        return None
    costs = [
        cost
        for cost in _Objective.model_validate(details.get("objective") or {}).shown()
        if all(cost in (t.costs or {}) for t in trials)
    ]
    if not costs:
        return None
    front = set(details.get("front") or [])
    chosen = details.get("chosen")
    # the search names its chosen trial in a dict, the auto recipe beside it
    chosen_number = chosen.get("trial") if isinstance(chosen, dict) else details.get("chosen_trial")
    return ParetoPlot(
        title=(
            "Auto: candidates and the Pareto front"
            if details.get("mode") == "auto"
            else "Search: trials and the Pareto front"
        ),
        metric_name=str(details.get("metric_name") or "metric"),
        costs=costs,
        trials=[
            TrialPoint(
                number=t.number,
                metric=t.metric if t.metric is not None else 0.0,
                costs={c: (t.costs or {})[c] for c in costs},
                on_front=t.number in front,
                chosen=t.number == chosen_number,
            )
            for t in trials
        ],
    )


# --- facts ----------------------------------------------------------------------------------


def _fact(label: str, value: Any) -> list[Fact]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return [Fact(label=label, value=text)]


def _part(details: Details, key: str) -> Details:
    """A nested dict of the details, or an empty one."""
    value = details.get(key)
    return value if isinstance(value, dict) else {}


def quantize_facts(details: Details) -> list[Fact]:
    rows = _part(details, "metric_rows")
    fallback = _part(details, "fallback")
    return [
        *_fact("mode", details.get("mode")),
        *_fact("chosen candidate", details.get("chosen")),
        *_fact("why", details.get("chosen_reason")),
        *_fact("candidates compared on eval rows (selection)", rows.get("selection")),
        *_fact("nodes kept in FP32", details.get("nodes_to_exclude")),
        *_fact("FP32 fallback", fallback.get("stopped") or fallback.get("reason")),
        *_fact("FP32 fallback measurements", fallback.get("measurements")),
        *_fact("returned the input unchanged", details.get("returned_input_unchanged") or None),
        *_fact("warning", details.get("warning")),
    ]


def _structured(details: Details) -> bool:
    return details.get("kind") == "structured" or isinstance(details.get("channels"), dict)


def _channels_removed(details: Details) -> str | None:
    try:
        channels = _channels.validate_python(details.get("channels"))
    except ValidationError:
        return None
    before = sum(b for b, _ in channels.values())
    after = sum(a for _, a in channels.values())
    return f"{before - after} of {before}" if before else None


def prune_facts(details: Details) -> list[Fact]:
    zipped = _part(details, "zip_size_bytes")
    macs = _part(details, "macs")
    structured = _structured(details)
    return [
        *_fact("kind", details.get("kind")),
        # the zero weights' share means nothing for structured pruning (always ~0: the
        # channels are removed, not zeroed); its channels removed are the measure
        *_fact("sparsity over all layers", None if structured else details.get("overall_sparsity")),
        *_fact("output channels removed", _channels_removed(details) if structured else None),
        *_fact("removed channel fraction", details.get("removed_channel_fraction")),
        *_fact("MACs reduction (x)", macs.get("reduction")),
        *_fact("compressed size ratio (zip)", zipped.get("ratio")),
        *_fact("metric after pruning", details.get("metric_after_pruning")),
        *_fact("metric after fine-tuning", details.get("metric_after_fine_tuning")),
    ]


def distill_facts(details: Details) -> list[Fact]:
    parameters = _part(details, "parameters")
    metric = _part(details, "eval_metric")
    return [
        *_fact("student/teacher parameters", parameters.get("ratio")),
        *_fact("best epoch", details.get("best_epoch")),
        *_fact("teacher metric", metric.get("teacher")),
        *_fact("distilled metric", metric.get("distilled")),
        *_fact("label-only metric", metric.get("label_only")),
    ]


def search_facts(details: Details) -> list[Fact]:
    budget = _part(details, "budget")
    chosen = _part(details, "chosen")
    return [
        *_fact("family", details.get("family")),
        *_fact("algorithm", details.get("algorithm")),
        *_fact("finished trials", budget.get("finished_trials")),
        *_fact("stopped by", budget.get("stopped_by")),
        *_fact("chosen trial", chosen.get("trial")),
        *_fact("why", chosen.get("reason")),
    ]


def auto_facts(details: Details) -> list[Fact]:
    budget = _part(details, "budget")
    goal = _part(details, "goal")
    skipped = _part(details, "skipped_kinds")
    return [
        *_fact("goal", ", ".join(f"{k} {v}" for k, v in goal.items()) or None),
        *_fact("chosen candidate", details.get("chosen")),
        *_fact("why", details.get("chosen_reason")),
        *_fact("trained on", details.get("training_source")),
        *_fact("candidates", budget.get("candidates")),
        *_fact("time spent (s)", budget.get("spent_s")),
        *_fact("stopped by", budget.get("stopped_by")),
        *_fact("kinds skipped", "; ".join(f"{k}: {v}" for k, v in skipped.items()) or None),
    ]


# method -> (facts, plots in the order shown)
SECTIONS: dict[str, tuple[FactBuilder, tuple[PlotBuilder, ...]]] = {
    "quantize": (
        quantize_facts,
        (candidates_plot, fallback_curve_plot, node_sensitivity_plot, training_plot),
    ),
    "prune": (prune_facts, (layer_sparsity_plot, layer_sensitivity_plot, training_plot)),
    "distill": (distill_facts, (training_plot,)),
    "search": (search_facts, (pareto_plot,)),
    "auto": (auto_facts, (candidates_plot, pareto_plot)),
}


def step_section(
    index: int, method: str, label: str, duration_s: float | None, details: Details
) -> StepSection:
    """The section of one step: its facts, notes and plot data."""
    fact_builder, plot_builders = SECTIONS.get(method, (lambda _: [], ()))
    section = StepSection(index=index, method=method, label=label, duration_s=duration_s)
    section.notes = [str(n) for n in details.get("notes") or [] if isinstance(n, str)]
    try:
        section.facts = fact_builder(details)
    except (ValidationError, TypeError, ValueError, AttributeError) as error:
        section.notes.append(f"the step's facts could not be read: {type(error).__name__}")
    for build in plot_builders:
        try:
            plot = build(details)
        except (ValidationError, TypeError, ValueError, AttributeError) as error:
            section.notes.append(
                f"{build.__name__.replace('_', ' ')} could not be read from the details: "
                f"{type(error).__name__}"
            )
            continue
        if plot is not None:
            section.plots.append(plot)
    return section
