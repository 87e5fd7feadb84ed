"""The "auto" quantization mode: try configurations, measure each here, keep the best.

The promise: the quantized model is never slower than its input, nor collapsed in
accuracy, without the report saying so. Every candidate is produced by a registered mode
and measured on this worker: its metric against the job's original model (on the eval
data, scored as `core.measure.score` scores the job), its size, and its latency at every
deployment batch size, timed interleaved against the step's input in one process so the
ratio is fair.

Decision rules, in order:

1. Candidates come from the model's op histogram unless `candidate_modes` names the
   modes. Convolution models (Conv nodes at least as many as MatMul/Gemm): static QDQ
   per-channel and its QOperator twin, each also with the shallow convolutions (fewer
   than 4 input channels: an image stem, slower in INT8) kept in FP32 when the model has
   any, plus dynamic with Conv left out when the model has MatMul/Gemm (dynamic
   ConvInteger is slow on the CPU provider). On a CPU whose INT8 kernels can saturate
   (core.quantize.cpu_int8: the default there is 7-bit weights) static QDQ is also tried
   with 8-bit weights ("-w8"): which costs the model more is measured. MatMul models
   (transformers, MLPs): dynamic per-channel (and per-tensor, ONNX Runtime's default,
   which can be faster but less accurate), static QDQ per-channel, and INT4 when that
   mode is registered. Recurrent models: dynamic per-channel and per-tensor
   (DynamicQuantizeLSTM), static QDQ. FP16 brings no speed on the CPU: it is tried only
   when asked for, or when size is the only target.
2. A candidate is "slower" when, at any deployment batch size (`JobSpec.batch_sizes`:
   1 and the job's batch size by default), its latency exceeds the input's by more than
   the noise: the project's one timing rule (core.timing), the very code the verdict
   judges the final model with. Each candidate is timed interleaved with the input and
   a second session of the input (A B A', B A' A, ...); ratios compare lower quartiles;
   the tolerance is what the input showed against itself, within 3%..10%. Slower
   candidates are never chosen unless `allow_slower` is set: INT8 that wins at batch 32
   but loses at batch 1 is slower for a user who serves at both. Speed is ranked by the
   geometric mean of the ratios over the deployment batch sizes. When the job names
   ONNX Runtime deployment targets, every candidate is timed under each of their
   sessions (thread counts, thread spinning as deployed: `StepData.timing_sessions`),
   so "slower" holds at every deployment thread count too; else at the worker's
   MeasureSettings.
   2b. When the full static QDQ candidate is slower than the input at some deployment
   batch size, "static-qdq-latency-aware" is tried too: the same quantizer told to
   quantize only the nodes whose integer kernels ONNX Runtime's profiler measured
   faster, Q/DQ at region borders included (core.quantize.latency_aware; its details
   carry the per-node table). It is then judged like every candidate.
3. Among the rest, those meeting every target win; of them the fastest (the lowest
   latency ratio to the input; candidates within the noise tolerance of the fastest,
   and at no batch size and thread count slower than it beyond that tolerance, count
   as equally fast, and then the smaller metric drop, to `METRIC_RESOLUTION`, then
   the smaller file wins).
   The reason names faster candidates that were passed over and the targets they miss.
4. The metric target is the verdict's (core.verdict.metric_checks): `max_metric_drop`
   (absolute or relative to the original's metric); without one a default guard of a
   1% relative drop ("default_metric_guard"), unless `targets.metric_guard` is false.
5. When no fast candidate meets the metric target, nodes of the fastest INT8 candidate
   (QDQ or dynamic before QOperator) are kept in float32 (`nodes_to_exclude`), chosen
   by their measured effect on the task metric (core.quantize.fallback: INC's
   accumulated fallback). The nodes are first ranked by the error each adds
   (`core.quantize.sensitivity`, a few calibration batches), which only orders the
   screening: each node (or, past the budget, each block of neighbouring nodes) is
   tried alone in float32 and the metric measured; then they are added best first,
   each step measured and reverted unless it brings the metric closer to the original;
   stop at the target, `max_fallback_nodes` or `max_fallback_trials` measurements; the
   units the target does not need are trimmed. Trials measure the metric only; the set
   kept is then measured like any candidate (latency too) and competes with them. The
   curve (float32 nodes -> metric) is `details.fallback.curve`. A mode that does not
   honour the exclusions stops the search and says so.
6. When no candidate meets every target, the closest wins: meeting the metric target
   first (else the smallest excess drop), then the latency target, then speed, then the
   size target, then size; details say which targets were missed and by what.
7. When every candidate is slower than the input and `allow_slower` is false, the input
   is returned unchanged (details: "returned_input_unchanged", and the table shows the
   fastest candidate and its ratio); the job's outcome is then "unchanged", never
   "improved". A user who wants the smaller file anyway sets `allow_slower: true`, and
   then the chosen model is marked `slower_than_input: true`.

Metrics are measured on `data.eval_arrays`: in a job, the selection rows of the job's
eval split (core.evaluation). The job's verdict judges the chosen model on the held-out
rows, which no decision here saw; the details' `met_on_selection_rows` is this step's
own view and is labelled as such.

Measurement, candidate production and the sensitivity ranking are parameters of `tune`,
so the decisions can be tested with controlled measurements. Progress is reported per
candidate inside the step's share of the job's progress (`RunContext.report_step`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime as ort

from core.context import MeasureSettings, RunContext
from core.data import (
    Feeds,
    feed_layout,
    model_feeds,
    pinned_batch_size,
    sample_count,
    take_rows,
)
from core.errors import EngineError, JobCancelled, StepFailed, UnsupportedModel
from core.formats import copy_model, iter_nodes, load_model
from core.measure import (
    file_size,
    time_sessions,
)
from core.quantize.common import (
    PER_CHANNEL_MIN_OPSET,
    QDQ_MIN_OPSET,
    validate_runs,
    wrap_failure,
)
from core.quantize.cpu_int8 import reduce_range_for
from core.quantize.fallback import MetricJudgement, TrialFailed, accumulated_fallback
from core.quantize.modes import get_mode, register_mode, registered_modes
from core.quantize.sensitivity import (
    NodeSensitivity,
    quantized_nodes,
    quantizer_input,
    rank_quantized_nodes,
)
from core.registry import StepData
from core.spec import (
    AutoQuantize,
    DynamicQuantize,
    Fp16Quantize,
    Int4Quantize,
    StaticQuantize,
    Targets,
)
from core.tune.choose import Decision, Outcome, choose, equally_fast
from core.tune.judge import Criteria, Measurement, as_the_baseline, judge
from core.tune.measure import WorkerMeasure
from core.verdict import metric_checks

# Sensitivity runs on a few calibration batches: enough to rank nodes, cheap to run.
SENSITIVITY_SAMPLES = 64
SENSITIVITY_BATCH_SIZE = 16
RANKING_REPORTED = 10

# Convs with fewer input channels than this run faster in FP32 (see shallow_convolutions).
SHALLOW_CONV_INPUT_CHANNELS = 4

# The full static candidate, and its latency-aware twin tried when it is slower (rule 2b)
FULL_STATIC_QDQ = "static-qdq-per-channel"
LATENCY_AWARE = "static-qdq-latency-aware"

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
MATMUL_OPS = frozenset({"MatMul", "Gemm"})
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
EXCLUDABLE_MODES = frozenset({"dynamic", "static"})

ModelKind = Literal["conv", "matmul", "recurrent", "other"]
CandidateConfig = DynamicQuantize | StaticQuantize | Fp16Quantize | Int4Quantize
_TINY = 1e-12


# --- what the model is -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    kind: ModelKind
    op_histogram: dict[str, int]
    conv_nodes: int
    matmul_nodes: int
    recurrent_nodes: int
    # names of the main graph's shallow convolutions (see `shallow_convolutions`)
    shallow_convs: tuple[str, ...] = ()


def profile_model(model: onnx.ModelProto) -> ModelProfile:
    """Classify the model by its op histogram (subgraphs included)."""
    histogram: dict[str, int] = {}
    for node in iter_nodes(model.graph):
        histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
    conv = sum(histogram.get(op, 0) for op in CONV_OPS)
    matmul = sum(histogram.get(op, 0) for op in MATMUL_OPS)
    recurrent = sum(histogram.get(op, 0) for op in RECURRENT_OPS)
    kind: ModelKind
    if recurrent:
        kind = "recurrent"
    elif conv and conv >= matmul:
        kind = "conv"
    elif matmul:
        kind = "matmul"
    else:
        kind = "other"
    return ModelProfile(
        kind,
        dict(sorted(histogram.items())),
        conv,
        matmul,
        recurrent,
        shallow_convs=tuple(shallow_convolutions(model)),
    )


def shallow_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's ungrouped Convs with fewer than
    `SHALLOW_CONV_INPUT_CHANNELS` input channels: an image stem, typically.

    VNNI multiplies four u8 x s8 pairs per lane, and the INT8 convolution kernels reduce
    over input channels: with 1-3 of them most of each dot product is padding. Profiled
    here (batch 32, digits CNN), the 1-channel 3x3 stem took 0.055 ms as QLinearConv and
    0.011 ms in FP32 while the 16-channel conv after it ran 2.4x faster in INT8; on the
    depthwise CNN, 0.89 ms vs 0.36 ms. Depthwise convs (grouped) have their own kernels
    and are not counted. Only named nodes: `nodes_to_exclude` works by name.
    """
    weights = {init.name: init for init in model.graph.initializer}
    shallow: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Conv" or not node.name or len(node.input) < 2:
            continue
        weight = weights.get(node.input[1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight is None or len(weight.dims) < 3 or group != 1:
            continue
        if weight.dims[1] < SHALLOW_CONV_INPUT_CHANNELS:
            shallow.append(node.name)
    return shallow


# --- what to try ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One configuration to produce with a registered mode and measure."""

    name: str
    config: CandidateConfig | None  # None: the step's input, unchanged
    base: str | None = None  # the candidate a fallback variant re-quantizes

    @property
    def mode(self) -> str:
        return "none" if self.config is None else self.config.mode

    @property
    def nodes_to_exclude(self) -> list[str]:
        return list(getattr(self.config, "nodes_to_exclude", []))

    def options(self) -> dict[str, Any]:
        """The options that tell this candidate apart, for the table."""
        config = self.config
        if isinstance(config, StaticQuantize):
            return {
                "format": config.format,
                "per_channel": config.per_channel,
                "activation_type": config.activation_type,
                "calibration_method": config.calibration_method,
                "calibration_samples": config.calibration_samples,
                "op_types": config.op_types,
                "nodes_to_exclude": list(config.nodes_to_exclude),
                "latency_aware": config.latency_aware,
                "reduce_range": reduce_range_for(config.reduce_range)[0],
            }
        if isinstance(config, DynamicQuantize):
            return {
                "per_channel": config.per_channel,
                "op_types": config.op_types,
                "nodes_to_exclude": list(config.nodes_to_exclude),
            }
        if isinstance(config, Int4Quantize):
            return {"block_size": config.block_size, "symmetric": config.symmetric}
        if isinstance(config, Fp16Quantize):
            return {"keep_fp32_op_types": list(config.keep_fp32_op_types)}
        return {}

    def excluding(self, nodes: Sequence[str]) -> Candidate:
        """This INT8 candidate with `nodes` kept in float32 too (besides its own)."""
        if not isinstance(self.config, DynamicQuantize | StaticQuantize):
            raise ValueError(f"{self.mode} mode cannot keep nodes in float32")
        kept = list(dict.fromkeys([*self.config.nodes_to_exclude, *nodes]))
        config = self.config.model_copy(update={"nodes_to_exclude": kept})
        return Candidate(f"{self.name}-fp32x{len(nodes)}", config, base=self.name)


def fallback_base(bases: Sequence[Outcome[Candidate]], tolerance: float) -> Outcome[Candidate]:
    """The candidate whose nodes the fallback keeps in float32: QDQ or dynamic before
    QOperator, whose integer tensors hide the float values the ranking compares; of those
    the fastest, and of the equally fast (within the noise tolerance) the one closest to
    the metric target, which needs the fewest nodes given back."""
    preferred = [o for o in bases if o.candidate.options().get("format") != "qoperator"]
    pool = preferred or list(bases)

    def ratio(outcome: Outcome[Candidate]) -> float:
        return outcome.judgement.latency_ratio if outcome.judgement else 0.0

    fastest = min(pool, key=ratio)
    as_fast_as_fastest = [o for o in pool if equally_fast(o, fastest, tolerance)]
    return min(
        as_fast_as_fastest,
        key=lambda o: (o.judgement.metric_excess if o.judgement else 0.0, ratio(o)),
    )


def default_modes(profile: ModelProfile, targets: Targets, available: Sequence[str]) -> list[str]:
    """The modes worth trying for this kind of model (rule 1 of the module docstring)."""
    if profile.kind == "conv":
        modes = ["static", *(["dynamic"] if profile.matmul_nodes else [])]
    elif profile.kind == "matmul":
        modes = ["dynamic", "static", *(["int4"] if "int4" in available else [])]
    else:
        modes = ["dynamic", "static"]
    size_only = (
        targets.max_size_bytes is not None
        and targets.max_latency_ms is None
        and targets.max_metric_drop is None
    )
    if size_only:
        modes.append("fp16")
    return modes


def plan_candidates(
    profile: ModelProfile, config: AutoQuantize, targets: Targets, available: Sequence[str]
) -> tuple[list[Candidate], list[str]]:
    """The candidates to try, and notes on modes asked for that cannot be tried."""
    modes = (
        list(dict.fromkeys(config.candidate_modes))
        if config.candidate_modes is not None
        else default_modes(profile, targets, available)
    )
    candidates: list[Candidate] = []
    notes: list[str] = []
    for mode in modes:
        if mode not in available:
            notes.append(f"{mode} mode is not available on this worker: not tried")
            continue
        candidates.extend(_variants(mode, profile, config))
    return candidates, notes


def _variants(mode: str, profile: ModelProfile, config: AutoQuantize) -> list[Candidate]:
    if mode == "static":
        calibration = {
            "calibration_method": config.calibration_method,
            "calibration_percentile": config.calibration_percentile,
            "calibration_samples": config.calibration_samples,
            "calibration_batch_size": config.calibration_batch_size,
        }
        formats: list[Literal["qdq", "qoperator"]] = ["qdq"]
        if profile.kind == "conv":
            # QLinearConv directly: sometimes faster than ORT's QDQ fusion, never slower
            # to try on a convolution model
            formats.append("qoperator")

        def static(fmt: Literal["qdq", "qoperator"], **options: Any) -> StaticQuantize:
            return StaticQuantize(
                method="quantize", mode="static", format=fmt, per_channel=True,
                **calibration, **options,
            )  # fmt: skip

        variants = [Candidate(f"static-{fmt}-per-channel", static(fmt)) for fmt in formats]
        stems = (
            # the same with the shallow convs (an image stem) in FP32, where INT8 is slower
            [
                Candidate(
                    f"{variant.name}-fp32-stem",
                    static(fmt, nodes_to_exclude=list(profile.shallow_convs)),
                )
                for fmt, variant in zip(formats, variants, strict=True)
            ]
            if profile.kind == "conv" and profile.shallow_convs
            else []
        )
        if reduce_range_for(None)[0]:
            # This CPU's INT8 kernels can saturate, so the default weights use 7 bits
            # (core.quantize.cpu_int8); whether that precision or the rare int16 overflow
            # of 8-bit weights costs the model more depends on the model (measured here:
            # a residual CNN changed 8 of 300 decisions with 7 bits, 3 with 8), so both
            # are measured and the task metric decides.
            variants.append(Candidate(f"{FULL_STATIC_QDQ}-w8", static("qdq", reduce_range=False)))
        return variants + stems
    if mode == "dynamic":
        # op_types None: every op the integer quantizer supports but Conv (ConvInteger is
        # slow); per-channel weights keep transformer embeddings close to FP32
        variants = [
            Candidate(
                "dynamic-per-channel",
                DynamicQuantize(method="quantize", mode="dynamic", per_channel=True),
            )
        ]
        if profile.kind in ("matmul", "recurrent"):
            # per-tensor: ONNX Runtime's default, at times measurably faster (one scale per
            # weight); the metric target or guard decides whether its accuracy is enough
            variants.append(
                Candidate(
                    "dynamic-per-tensor",
                    DynamicQuantize(method="quantize", mode="dynamic", per_channel=False),
                )
            )
        return variants
    if mode == "int4":
        return [Candidate("int4-block32", Int4Quantize(method="quantize", mode="int4"))]
    if mode == "fp16":
        return [Candidate("fp16", Fp16Quantize(method="quantize", mode="fp16"))]
    return []


# --- measuring on the worker -----------------------------------------------------------------

MeasureFn = Callable[[Path], Measurement]
ProduceFn = Callable[[Candidate, Path, Path, RunContext], dict[str, Any]]
# (the float32 model the quantizer saw, the quantized model) -> nodes, most sensitive first
RankFn = Callable[[Path, Path], list[NodeSensitivity]]
ProgressFn = Callable[[float, str, dict[str, Any]], None]
# a model file -> its task metric on the step's eval rows (the fallback's trials)
ScoreFn = Callable[[Path], float]


@dataclass(frozen=True)
class _Produced:
    """A fallback variant the trials produced and scored (reused if it is kept)."""

    name: str
    path: Path
    details: dict[str, Any]
    metric: float


def time_interleaved(
    sessions: Sequence[ort.InferenceSession], feeds: Feeds, settings: MeasureSettings
) -> list[list[float]]:
    """Run times in ms per session, by the project's one timing rule (core.timing)."""
    return time_sessions(sessions, feeds, settings)


def produce_with_mode(data: StepData) -> ProduceFn:
    """Produce a candidate by calling its registered mode."""

    def produce(
        candidate: Candidate, source: Path, target: Path, ctx: RunContext
    ) -> dict[str, Any]:
        return get_mode(candidate.mode)(source, target, candidate.config, data, ctx)

    return produce


def rank_with_calibration(data: StepData, ctx: RunContext) -> RankFn:
    """Rank a candidate's quantized nodes on the first calibration samples."""

    def rank(reference_path: Path, quantized_path: Path) -> list[NodeSensitivity]:
        feeds = data.calibration_feeds(rows=SENSITIVITY_SAMPLES)
        layout = feed_layout(data.calibration_arrays, data.inputs, data.task)
        batch = pinned_batch_size(data.inputs, data.task) or SENSITIVITY_BATCH_SIZE
        total = len(next(iter(feeds.values())))
        batches = [
            layout.to_model(
                take_rows({n: a[start : start + batch] for n, a in feeds.items()}, batch)
            )
            for start in range(0, total, batch)
        ]
        return rank_quantized_nodes(
            reference_path,
            quantized_path,
            batches,
            settings=ctx.measure,
            device=ctx.device,
            check_cancelled=ctx.check_cancelled,
        )

    return rank


def step_progress(ctx: RunContext) -> ProgressFn:
    """Progress within the step, mapped into the step's share of the job's progress."""

    def report(fraction: float, message: str, data: dict[str, Any]) -> None:
        ctx.report_step(fraction, message, **data)

    return report


# --- the tuner -------------------------------------------------------------------------------


@register_mode("auto")
def quantize_auto_mode(
    model_path: Path, output_path: Path, config: AutoQuantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    return tune(model_path, output_path, config, data, ctx)


def tune(
    model_path: Path,
    output_path: Path,
    config: AutoQuantize,
    data: StepData,
    ctx: RunContext,
    *,
    measure: MeasureFn | None = None,
    produce: ProduceFn | None = None,
    rank: RankFn | None = None,
    progress: ProgressFn | None = None,
    available_modes: Sequence[str] | None = None,
    score: ScoreFn | None = None,
) -> dict[str, Any]:
    """Try candidates, measure each, write the best to `output_path`; return the evidence.

    Candidates are judged on `data.eval_arrays` (in a job: the selection rows of the
    job's eval split; the verdict judges the result on the held-out rows). Raises
    StepFailed (UnsupportedModel when every failure was one) when no candidate could be
    produced and measured; JobCancelled as soon as the job is cancelled.
    """
    if measure is None:
        worker = WorkerMeasure(model_path, data, ctx)
        measure = worker
        # the fallback's trials need the metric only: no timing
        score = score or (lambda path: worker.metric(path)[1])
    given = measure
    score = score or (lambda path: given(path).metric_value)
    tuner = _Tuner(
        model_path=model_path,
        config=config,
        data=data,
        ctx=ctx,
        measure=measure,
        produce=produce or produce_with_mode(data),
        rank=rank or rank_with_calibration(data, ctx),
        progress=progress or step_progress(ctx),
        score=score,
    )
    return tuner.run(
        output_path, registered_modes() if available_modes is None else available_modes
    )


@dataclass
class _Tuner:
    model_path: Path
    config: AutoQuantize
    data: StepData
    ctx: RunContext
    measure: MeasureFn
    produce: ProduceFn
    rank: RankFn
    progress: ProgressFn
    score: ScoreFn
    outcomes: list[Outcome[Candidate]] = field(default_factory=list)
    criteria: Criteria = field(init=False)
    _digests: dict[str, Outcome[Candidate]] = field(default_factory=dict)
    _references: dict[str, Path] = field(default_factory=dict)
    _trials: int = 0
    _trial_metrics: dict[str, float] = field(default_factory=dict)

    def run(self, output_path: Path, available: Sequence[str]) -> dict[str, Any]:
        profile = profile_model(load_model(self.model_path))
        candidates, notes = plan_candidates(profile, self.config, self.data.targets, available)
        if not candidates:
            raise UnsupportedModel(
                "auto quantization has no candidate to try: " + "; ".join(notes or ["none"]),
                code="no_candidates",
            )
        self.progress(0.0, "auto: measuring the input", {"candidates": len(candidates)})
        input_measurement = self.measure(self.model_path)
        self.criteria = self._criteria(input_measurement)
        input_outcome = Outcome(
            Candidate("input", None),
            "measured",
            path=self.model_path,
            measurement=input_measurement,
            judgement=as_the_baseline(judge(input_measurement, self.criteria)),
        )

        steps = len(candidates) + 1
        for index, candidate in enumerate(candidates):
            self.progress((index + 1) / steps * 0.7, f"auto: trying {candidate.name}", {})
            outcome = self._try(candidate)
            self.progress(
                (index + 2) / steps * 0.7,
                f"auto: {candidate.name} {outcome.status}",
                {"candidate": outcome.row(self.criteria.input_size_bytes)},
            )

        self._latency_aware_if_needed()
        sensitivity, fallback = self._fallback_if_needed()
        decision = choose(self.outcomes, self.criteria)
        if decision.chosen is None and not any(o.usable for o in self.outcomes):
            raise self._nothing_worked()

        if decision.chosen is None:
            chosen_outcome = input_outcome
            copy_model(self.model_path, output_path)  # with its external data, if any
        else:
            chosen_outcome = self.outcomes[decision.chosen]
            assert chosen_outcome.path is not None
            copy_model(chosen_outcome.path, output_path)
        chosen_outcome.chosen = True
        self.progress(1.0, f"auto: chose {chosen_outcome.candidate.name}", {})
        return self._details(
            profile, notes, input_outcome, chosen_outcome, decision, sensitivity, fallback
        )

    def _criteria(self, input_measurement: Measurement) -> Criteria:
        original = self.data.original_metrics
        # the original's metric on the rows the candidates are scored on, when known: on
        # half the eval data, the whole data's figure would count sampling noise as drop
        baseline = (
            input_measurement.reference_metric
            if input_measurement.reference_metric is not None
            else original.metric_value
            if original is not None
            else input_measurement.metric_value
        )
        # The input timed against a second session of itself shows this machine's noise.
        tolerance = max(lat.tolerance for lat in input_measurement.latency)
        return Criteria(
            targets=self.data.targets,
            baseline_metric=baseline,
            input_size_bytes=file_size(self.model_path),
            batch_sizes=tuple(lat.batch_size for lat in input_measurement.latency),
            # the job-level permission covers every step
            allow_slower=self.config.allow_slower or self.data.targets.allow_slower,
            tolerance=tolerance,
        )

    def _try(self, candidate: Candidate, produced: _Produced | None = None) -> Outcome[Candidate]:
        """Produce (or take `produced`), validate and measure one candidate: a row."""
        folder = self.ctx.work_dir / "candidates" / f"{len(self.outcomes):02d}-{candidate.name}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        outcome = Outcome(candidate, "failed", path=path)
        self.outcomes.append(outcome)
        try:
            if produced is None:
                outcome.mode_details, note = self._produce(candidate, path, folder)
                if note is not None:
                    outcome.note = note
                    return outcome
            else:
                copy_model(produced.path, path)
                outcome.mode_details = produced.details
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in self._digests:
                twin = self._digests[digest]
                outcome.status = "duplicate"
                outcome.note = f"the same file as {twin.candidate.name}: not measured again"
                # judged as its twin was (the fallback reads it), chosen only as the twin
                outcome.measurement, outcome.judgement = twin.measurement, twin.judgement
                return outcome
            self._digests[digest] = outcome
            outcome.measurement = self.measure(path)
            outcome.judgement = judge(outcome.measurement, self.criteria)
            outcome.status = "measured"
        except JobCancelled:
            raise
        except EngineError as exc:
            outcome.note, outcome.error = f"{exc.code}: {exc.message}", exc
        except Exception as exc:
            error = wrap_failure(exc, candidate.mode, self.model_path)
            outcome.note, outcome.error = f"{error.code}: {error.message}", error
        return outcome

    def _produce(
        self, candidate: Candidate, path: Path, folder: Path
    ) -> tuple[dict[str, Any], str | None]:
        """Write the candidate to `path` and check it runs; the mode's details, and a note
        when the mode did not honour the candidate's exclusions (then it is not used)."""
        details = self.produce(
            candidate, self.model_path, path, dataclasses.replace(self.ctx, work_dir=folder)
        )
        validate_runs(path, self.data, self.ctx.device, what=f"candidate {candidate.name}")
        missing = details.get("nodes_to_exclude_not_found") or []
        if missing:
            return details, (
                f"{candidate.mode} mode found no node named {', '.join(missing)} (nodes_to_exclude)"
            )
        still = self._still_quantized(candidate, path)
        if still:
            return details, (
                f"{candidate.mode} mode did not keep {', '.join(still)} in float32 "
                "(nodes_to_exclude)"
            )
        return details, None

    def _still_quantized(self, candidate: Candidate, path: Path) -> list[str]:
        excluded = candidate.nodes_to_exclude
        if not excluded:
            return []
        reference = load_model(self._reference_for(candidate))
        quantized = set(quantized_nodes(reference, load_model(path)))
        return [name for name in excluded if name in quantized]

    def _reference_for(self, candidate: Candidate) -> Path:
        """The float32 graph the candidate's quantizer works on (cached per preparation)."""
        config = candidate.config
        key = (
            f"static-opset{PER_CHANNEL_MIN_OPSET if config.per_channel else QDQ_MIN_OPSET}"
            if isinstance(config, StaticQuantize)
            else "input"
        )
        if key not in self._references:
            self._references[key] = quantizer_input(
                self.model_path, config, self.ctx.work_dir / "reference" / key
            )
        return self._references[key]

    # rule 2b: a full static QDQ model slower than the input somewhere: quantize only the
    # nodes whose integer kernels win here (core.quantize.latency_aware)
    def _latency_aware_if_needed(self) -> None:
        full = next(
            (
                o
                for o in self.outcomes
                if o.candidate.name == FULL_STATIC_QDQ and o.status == "measured"
            ),
            None,
        )
        if full is None or full.judgement is None or not full.judgement.slower:
            return
        assert isinstance(full.candidate.config, StaticQuantize)
        config = full.candidate.config.model_copy(update={"latency_aware": True})
        self.progress(0.7, f"auto: trying {LATENCY_AWARE}", {})
        outcome = self._try(Candidate(LATENCY_AWARE, config, base=FULL_STATIC_QDQ))
        self.progress(
            0.72,
            f"auto: {LATENCY_AWARE} {outcome.status}",
            {"candidate": outcome.row(self.criteria.input_size_bytes)},
        )

    # rule 5: keep in float32 the nodes whose float32 measurably brings the metric back
    def _fallback_if_needed(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        criteria = self.criteria
        criterion = criteria.metric_criterion
        if criterion is None:
            return None, None
        eligible = [
            o
            for o in self.outcomes
            if o.usable and o.judgement and (criteria.allow_slower or not o.judgement.slower)
        ]
        if any(o.judgement and o.judgement.metric_ok for o in eligible):
            return None, None
        if not eligible and any(o.judgement and o.judgement.metric_ok for o in self.outcomes):
            return None, None  # speed is the problem, not the metric
        if self.config.max_fallback_nodes == 0:
            return None, {"ran": False, "reason": "max_fallback_nodes is 0"}
        bases = [o for o in eligible if o.candidate.mode in EXCLUDABLE_MODES]
        if not bases:
            reason = (
                "no INT8 candidate is as fast as the input: keeping nodes in float32 would "
                "not make one faster"
                if not criteria.allow_slower
                else "no INT8 candidate was measured"
            )
            return None, {"ran": False, "reason": reason}
        base = fallback_base(bases, criteria.tolerance)
        assert base.path is not None and base.measurement is not None
        self.progress(0.75, f"auto: ranking the nodes of {base.candidate.name}", {})
        ranking = self.rank(self._reference_for(base.candidate), base.path)
        sensitivity = {
            "base": base.candidate.name,
            "node_names": "as in the float32 graph the base's quantizer sees",
            "error": "relative L2 added by the node (output error - worst input error)",
            "use": "orders the screening; the nodes kept are chosen by the measured metric",
            "samples": SENSITIVITY_SAMPLES,
            "nodes_ranked": len(ranking),
            "top": [item.as_dict() for item in ranking[:RANKING_REPORTED]],
        }
        produced: dict[tuple[str, ...], _Produced] = {}

        def evaluate(nodes: tuple[str, ...]) -> float:
            result = self._trial(base.candidate.excluding(nodes))
            produced[nodes] = result
            self.progress(
                0.8 + 0.15 * min(len(produced) / self.config.max_fallback_trials, 1.0),
                f"auto: {result.name} scored {result.metric:.4g}",
                {"fallback_trial": {"nodes": len(nodes), "metric": result.metric}},
            )
            return result.metric

        plan = accumulated_fallback(
            [item.node for item in ranking],
            base.measurement.metric_value,
            evaluate,
            self._metric_judgement,
            max_nodes=self.config.max_fallback_nodes,
            max_trials=self.config.max_fallback_trials,
            positions={item.node: item.position for item in ranking if item.position is not None},
        )
        fallback: dict[str, Any] = {
            "ran": True,
            "base": base.candidate.name,
            "method": "accumulated: units screened alone in float32, then added best "
            "first, a step that does not bring the metric closer to the original reverted",
            "units": plan.units,
            "metric_name": base.measurement.metric_name,
            "original_metric": criteria.baseline_metric,
            "metric_criterion": dataclasses.asdict(criterion),
            "max_fallback_nodes": self.config.max_fallback_nodes,
            "max_fallback_trials": self.config.max_fallback_trials,
            "measurements": sum(1 for t in plan.trials if t.metric is not None),
            "curve": [point.as_dict() for point in plan.curve],
            "gains": [{"unit": unit, "metric_drop_recovered": g} for unit, g in plan.gains],
            "trials": [trial.as_dict() for trial in plan.trials],
            "met_metric_target": plan.met,
            "nodes_to_exclude": list(plan.kept),
            "metric_with_nodes_kept": plan.metric,
            "metric_drop_with_nodes_kept": plan.drop,
            "stopped": plan.stopped,
        }
        if plan.kept:
            # the kept set competes like every candidate: fully measured, latency included
            outcome = self._try(base.candidate.excluding(plan.kept), produced.get(plan.kept))
            fallback["candidate"] = outcome.candidate.name
        return sensitivity, fallback

    def _metric_judgement(self, value: float) -> MetricJudgement:
        """A metric value against the job's metric target (the verdict's rules)."""
        checks = metric_checks(self.criteria.baseline_metric, value, self.data.targets)
        return MetricJudgement(
            drop=max((check.measured for check in checks), default=0.0),
            met=all(check.met for check in checks),
        )

    def _trial(self, candidate: Candidate) -> _Produced:
        """Produce a fallback variant and score its metric only (no timing): the
        fallback's search measures many, and only the set it keeps is timed."""
        folder = self.ctx.work_dir / "candidates" / f"t{self._trials:02d}-{candidate.name}"
        self._trials += 1
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        try:
            details, note = self._produce(candidate, path, folder)
        except JobCancelled:
            raise
        except EngineError as exc:
            raise TrialFailed(f"{exc.code}: {exc.message}") from exc
        except Exception as exc:
            error = wrap_failure(exc, candidate.mode, self.model_path)
            raise TrialFailed(f"{error.code}: {error.message}") from exc
        if note is not None:
            # a mode that ignores one exclusion ignores the next ones too
            raise TrialFailed(note, fatal=note.startswith(f"{candidate.mode} mode did not keep"))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in self._trial_metrics:
            try:
                self._trial_metrics[digest] = self.score(path)
            except JobCancelled:
                raise
            except EngineError as exc:
                raise TrialFailed(f"{exc.code}: {exc.message}") from exc
        return _Produced(candidate.name, path, details, self._trial_metrics[digest])

    def _nothing_worked(self) -> EngineError:
        reasons = "; ".join(f"{o.candidate.name}: {o.note}" for o in self.outcomes)
        errors = [o.error for o in self.outcomes]
        if errors and all(isinstance(error, UnsupportedModel) for error in errors):
            # every mode refused the model: say so under their code when they agree
            codes = {error.code for error in errors if error is not None}
            code = codes.pop() if len(codes) == 1 else "no_candidate_works"
            return UnsupportedModel(f"auto quantization: no candidate works: {reasons}", code=code)
        return StepFailed(f"auto quantization: no candidate could be measured: {reasons}")

    def _details(
        self,
        profile: ModelProfile,
        notes: list[str],
        input_outcome: Outcome[Candidate],
        chosen: Outcome[Candidate],
        decision: Decision,
        sensitivity: dict[str, Any] | None,
        fallback: dict[str, Any] | None,
    ) -> dict[str, Any]:
        criteria = self.criteria
        size = criteria.input_size_bytes
        input_row = input_outcome.row(size)
        judgement = chosen.judgement
        assert judgement is not None
        met = dict(judgement.met)
        required = [k for k in met if k != "not_slower_than_input" or not criteria.allow_slower]
        criterion = criteria.metric_criterion
        details: dict[str, Any] = {
            "mode": "auto",
            "model_kind": profile.kind,
            "op_histogram": profile.op_histogram,
            "batch_sizes": list(criteria.batch_sizes),
            "latency_tolerance": criteria.tolerance,
            "metric_baseline": criteria.baseline_metric,
            "metric_criterion": dataclasses.asdict(criterion) if criterion else None,
            # the rows every choice here was made on; the job's verdict judges the result
            # on the held-out rows, which this step never saw
            "metric_rows": {
                "selection": sample_count(
                    model_feeds(self.data.eval_arrays, self.data.inputs, self.data.task)
                )
            },
            "candidates": [input_row] + [o.row(size) for o in self.outcomes],
            "chosen": chosen.candidate.name,
            "chosen_reason": decision.reason,
            "met_on_selection_rows": met,
            "targets_met_on_selection_rows": all(met[k] for k in required),
            "slower_than_input": judgement.slower,
            "slower_than_input_at_batch_sizes": list(judgement.slower_at),
            "returned_input_unchanged": chosen is input_outcome,
            "nodes_to_exclude": chosen.candidate.nodes_to_exclude,
            "chosen_details": chosen.mode_details,
        }
        if notes:
            details["notes"] = notes
        tried = next((o for o in self.outcomes if o.candidate.name == LATENCY_AWARE), None)
        if tried is not None and "latency_aware" in tried.mode_details:
            # the per-node evidence of rule 2b, chosen or not
            details["latency_aware"] = {
                "candidate": LATENCY_AWARE,
                "tried_because": f"{FULL_STATIC_QDQ} is slower than the input",
                **tried.mode_details["latency_aware"],
            }
        if sensitivity is not None:
            details["sensitivity"] = sensitivity
        if fallback is not None:
            details["fallback"] = fallback
        return details


__all__ = [
    "Candidate",
    "ModelProfile",
    "plan_candidates",
    "profile_model",
    "tune",
]
