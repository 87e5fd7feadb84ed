"""The job spec: what the user asks for, validated at the edge.

Steps are a discriminated union on `method`; adding a method means adding its config
here and registering its function in `core.registry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType

from core.families import FAMILIES, CnnFamily, MlpFamily, TransformerFamily
from core.runtimes.settings import DeploymentTarget


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo in a spec must not be silently ignored."""

    # NaN/Infinity are refused: they are not JSON, and PostgreSQL's JSON column rejects them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# a JSON value that becomes an array: a number, a bool, or nested lists of them
JsonConstant = TypeAliasType("JsonConstant", "bool | int | float | list[JsonConstant]")


class InputBinding(StrictModel):
    """How one model input is fed: a dataset array with its samples on `sample_axis`
    (split into batches there), a dataset array fed whole to every batch (`per_sample`
    false: a fixed mask), or a `constant` value fed unchanged (a sample rate, a flag)."""

    array: str | None = Field(default=None, min_length=1, max_length=200)
    # the axis of `array` (and of the model input) that holds the samples: a streaming
    # model's state [layers, batch, hidden] has them on axis 1
    sample_axis: int = Field(default=0, ge=0, le=7)
    per_sample: bool = True
    constant: JsonConstant | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputBinding:
        if (self.array is None) == (self.constant is None):
            raise ValueError("give either array (a dataset array) or constant (a value)")
        if self.constant is not None and (self.sample_axis != 0 or not self.per_sample):
            raise ValueError("a constant is fed whole: sample_axis and per_sample do not apply")
        if not self.per_sample and self.sample_axis != 0:
            raise ValueError("an array fed whole (per_sample false) has no sample_axis")
        return self

    @property
    def splits_samples(self) -> bool:
        """True for a per-sample array, split into batches along `sample_axis`."""
        return self.array is not None and self.per_sample


class CtcDecoding(StrictModel):
    """Greedy CTC decoding of per-timestep class scores: argmax per step, repeats merged,
    blanks dropped."""

    blank: int = Field(default=0, ge=0)
    merge_repeats: bool = True


TaskKind = Literal["classification", "sequence", "mask", "embedding", "regression"]


class TaskSpec(StrictModel):
    """How to feed the model and how to score it (metrics: core.metrics)."""

    # classification: one score vector per sample; sequence: scores per position
    # (N, T, C), decoded with `ctc` when set; mask: a probability (or logit) map per
    # sample, thresholded; embedding: vectors; regression: values.
    kind: TaskKind = "classification"
    # Model input name -> the array that feeds it (a name, or a binding with its sample
    # axis, or a constant); inputs not listed are fed by the array of their own name.
    inputs: dict[str, str | InputBinding] = Field(default_factory=dict, max_length=256)
    # The model output the metric reads (default: the first output). Every other output
    # is still compared with the original's (max and mean abs difference, agreement).
    output: str | None = None
    # The axis of the metric's output that holds the samples (a CTC head exported
    # time-major is (T, N, C): 1).
    output_sample_axis: int = Field(default=0, ge=0, le=7)
    # Array holding the labels: classification class indices (N,); sequence integer
    # label sequences (N, L) padded with -1; mask 0/1 maps shaped like the output;
    # regression values. When absent from the eval data, the metric compares with the
    # original model's outputs instead (and the record says so).
    labels: str = "label"
    # The metric the targets judge (core.metrics; higher is better for every one of
    # them); None: the task's default. Every metric that applies is reported too.
    metric: str | None = Field(default=None, min_length=1, max_length=64)
    ctc: CtcDecoding | None = None
    # mask: a value above this is "in the mask" (probabilities: 0.5; logits: 0)
    threshold: float = 0.5

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.ctc is not None and self.kind != "sequence":
            raise ValueError(f"ctc decoding applies to sequence tasks, not {self.kind!r}")
        if self.metric is not None:
            # imported here: core.metrics imports this module
            from core.metrics import check_metric_for_task

            check_metric_for_task(self.metric, self)
        return self

    def binding(self, input_name: str) -> InputBinding:
        """How `input_name` is fed (an array of its own name when not listed)."""
        bound = self.inputs.get(input_name, input_name)
        return InputBinding(array=bound) if isinstance(bound, str) else bound

    def metric_output(self, model_outputs: list[str]) -> str:
        """The output the metric reads, by name."""
        return self.output or model_outputs[0]


# Without max_metric_drop, a result whose metric fell by more than this share of the
# original's is still no success (Intel Neural Compressor's default tolerance).
DEFAULT_METRIC_GUARD_RELATIVE = 0.01


class Targets(StrictModel):
    """Limits the final model must meet; each is checked against measured values."""

    # Metric drop vs the original: absolute in metric units (0.01 = one accuracy point),
    # or relative to the original's metric when `metric_drop_mode` is "relative".
    max_metric_drop: float | None = Field(default=None, ge=0)
    metric_drop_mode: Literal["absolute", "relative"] = "absolute"
    # Without max_metric_drop the verdict still refuses a metric that fell by more than
    # DEFAULT_METRIC_GUARD_RELATIVE of the original's ("default_metric_guard"); false
    # turns that guard off, for a user who truly accepts any drop.
    metric_guard: bool = True
    # Checked at every deployment batch size (JobSpec.batch_sizes): at least this many
    # times as fast as the original (an auto job's goal sets it).
    min_speedup: float | None = Field(default=None, gt=1.0, le=1000.0)
    # Checked at every deployment batch size (JobSpec.batch_sizes).
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_size_bytes: int | None = Field(default=None, gt=0)
    # A final model slower than the original at any deployment batch size misses the
    # implicit "not_slower" target unless the user allows it (e.g. FP16 for size alone).
    allow_slower: bool = False


class _QuantizeBase(StrictModel):
    method: Literal["quantize"]


class _Int8Options(StrictModel):
    per_channel: bool = True
    # None: on where this CPU's INT8 kernels can saturate (x86 without VNNI), else off
    # (core.quantize.cpu_int8); true or false as given otherwise.
    reduce_range: bool | None = None
    # Op types to quantize; None lets the engine choose for the mode.
    op_types: list[str] | None = None
    # Node names kept in float32 (the accuracy-aware tuner fills this itself).
    nodes_to_exclude: list[str] = Field(default_factory=list, max_length=10_000)


class _CalibrationOptions(StrictModel):
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # Percentile calibration keeps this percentile of |activation| as the range.
    calibration_percentile: float = Field(default=99.999, gt=90.0, le=100.0)
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    calibration_batch_size: int = Field(default=32, ge=1, le=4096)


class DynamicQuantize(_QuantizeBase, _Int8Options):
    """INT8 weights, activations quantized at run time (dynamic mode leaves Conv out by
    default: ConvInteger is slow on ONNX Runtime's CPU provider)."""

    mode: Literal["dynamic"]


class StaticQuantize(_QuantizeBase, _Int8Options, _CalibrationOptions):
    """INT8 weights and activations, activation ranges calibrated on the uploaded data."""

    mode: Literal["static"]
    format: Literal["qdq", "qoperator"] = "qdq"
    activation_type: Literal["uint8", "int8"] = "uint8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    latency_aware: bool = Field(
        default=False,
        description=(
            "Quantize only where INT8 is measured faster: the float model and its full "
            "QDQ twin are profiled per node in ONNX Runtime at the deployment batch "
            "sizes, and a node is quantized when its integer kernel beats its float one "
            "by more than the QuantizeLinear/DequantizeLinear its region then needs at "
            "its borders (connected winners share one border; a lone small win stays "
            "float). QDQ format only. The details' latency_aware.table gives every "
            "node's fp32 and int8 microseconds and why it was chosen."
        ),
    )


class Fp16Quantize(_QuantizeBase):
    """Float16 weights and compute; inputs and outputs stay as the user had them."""

    mode: Literal["fp16"]
    # Op types kept in float32 on top of the engine's list of numerically unsafe ops.
    keep_fp32_op_types: list[str] = Field(default_factory=list)


class Int4Quantize(_QuantizeBase):
    """Weight-only 4-bit blocks for MatMul/Gemm weights (MatMulNBits) and embedding
    tables (GatherBlockQuantized)."""

    mode: Literal["int4"]
    block_size: Literal[16, 32, 64, 128, 256] = 32
    symmetric: bool = True
    # The small float tensors no 4-bit kernel holds (biases, norms): INT8, dequantized
    # at run time, or left as they are.
    other_weights: Literal["int8", "float32"] = "int8"


class QatQuantize(_QuantizeBase):
    """Quantization-aware training: fake-quant fine-tuning in PyTorch on the training
    data, exported as a QDQ model."""

    mode: Literal["qat"]
    epochs: int = Field(default=3, ge=1, le=1000)
    learning_rate: float = Field(default=1e-4, gt=0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    per_channel: bool = True


class AutoQuantize(_QuantizeBase, _CalibrationOptions):
    """Try candidate configurations, measure each on the worker, keep the best that meets
    the job's targets; fall back sensitive nodes to FP32 when accuracy needs it."""

    mode: Literal["auto"] = "auto"
    # Modes the tuner may try; None: chosen per model (e.g. static QDQ for convolutions,
    # dynamic per-channel for transformer MatMuls).
    candidate_modes: list[Literal["dynamic", "static", "fp16", "int4"]] | None = None
    # Return a model slower than the step's input only when the user says so.
    allow_slower: bool = False
    max_fallback_nodes: int = Field(default=16, ge=0, le=10_000)
    # Metric measurements the fallback may spend choosing those nodes (each one a
    # quantized variant scored on the selection rows; core.quantize.fallback).
    max_fallback_trials: int = Field(default=32, ge=1, le=1_000)


def _quantize_mode(value: Any) -> str:
    mode = value.get("mode", "auto") if isinstance(value, dict) else getattr(value, "mode", None)
    return mode if isinstance(mode, str) else "auto"


QuantizeStep = Annotated[
    Annotated[AutoQuantize, Tag("auto")]
    | Annotated[DynamicQuantize, Tag("dynamic")]
    | Annotated[StaticQuantize, Tag("static")]
    | Annotated[Fp16Quantize, Tag("fp16")]
    | Annotated[Int4Quantize, Tag("int4")]
    | Annotated[QatQuantize, Tag("qat")],
    Discriminator(_quantize_mode),
]
QuantizeConfig = (
    AutoQuantize | DynamicQuantize | StaticQuantize | Fp16Quantize | Int4Quantize | QatQuantize
)
QUANTIZE_MODES = ("auto", "dynamic", "static", "fp16", "int4", "qat")


class FineTune(StrictModel):
    """Training after pruning, on the job's train_dataset_id with the task's loss."""

    epochs: int = Field(default=2, ge=0, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = Field(default=64, ge=1, le=4096)
    weight_decay: float = Field(default=0.0, ge=0, le=1.0)


class PruneSensitivity(StrictModel):
    """Prune each layer alone over a sparsity sweep and measure the metric (Distiller's
    sensitivity analysis); optionally derive per-layer ratios from the curves."""

    sparsities: list[float] = Field(default=[0.25, 0.5, 0.75, 0.9], min_length=1, max_length=20)
    derive_layer_ratios: bool = False
    # with derive_layer_ratios: the largest ratio per layer whose metric drop stays within
    max_metric_drop: float = Field(default=0.01, ge=0)


class _PruneBase(StrictModel):
    method: Literal["prune"]
    # Layers (module names) left alone; None: the first and the last prunable layer.
    skip_layers: list[str] | None = None
    # Per-layer sparsity overrides by module name.
    layer_sparsity: dict[str, float] = Field(default_factory=dict)
    fine_tune: FineTune = Field(default_factory=FineTune)
    sensitivity: PruneSensitivity | None = None

    @field_validator("layer_sparsity")
    @classmethod
    def _ratios_are_fractions(cls, ratios: dict[str, float]) -> dict[str, float]:
        bad = {name: ratio for name, ratio in ratios.items() if not 0.0 <= ratio < 1.0}
        if bad:
            raise ValueError(f"layer sparsity must be in [0, 1): {bad}")
        return ratios


class UnstructuredPrune(_PruneBase):
    """Magnitude pruning (I(w) = |w|) of individual weights; gains size after
    compression, not speed in ONNX Runtime."""

    kind: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    scope: Literal["global", "local"] = "global"
    # one_shot, or TF-MOT's PolynomialDecay from initial to final sparsity between
    # begin_step and end_step (optimizer steps of fine-tuning), pruning every `frequency`.
    schedule: Literal["one_shot", "polynomial"] = "one_shot"
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    begin_step: int = Field(default=0, ge=0)
    end_step: int | None = Field(default=None, ge=1)
    frequency: int = Field(default=10, ge=1)
    power: float = Field(default=3.0, gt=0)

    @model_validator(mode="after")
    def _schedule_is_consistent(self) -> UnstructuredPrune:
        if self.schedule == "polynomial":
            if self.fine_tune.epochs == 0:
                raise ValueError("a polynomial schedule prunes during fine-tuning: epochs > 0")
            if self.initial_sparsity > self.sparsity:
                raise ValueError("initial_sparsity must not exceed sparsity")
            if self.end_step is not None and self.end_step <= self.begin_step:
                raise ValueError("end_step must come after begin_step")
        return self


class StructuredPrune(_PruneBase):
    """Channel/filter (and attention head) pruning that makes the model physically
    smaller and faster, dependency-aware through torch-pruning."""

    kind: Literal["structured"]
    # fraction of channels removed from each prunable layer (global scope: on average)
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    importance: Literal["l1", "l2", "taylor"] = "l1"
    scope: Literal["global", "local"] = "local"
    # pruning in this many rounds (fine-tuning between rounds when epochs > 0)
    iterations: int = Field(default=1, ge=1, le=100)
    # fraction of attention heads removed from each attention block (before channels)
    head_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)


class SemiStructuredPrune(_PruneBase):
    """N:M masks (2:4 by default): N of every M consecutive weights kept. Their speedup
    needs GPU sparse kernels; on CPU the result is reported as a masked dense model."""

    kind: Literal["n_m"]
    n: int = Field(default=2, ge=1)
    m: int = Field(default=4, ge=2)

    @model_validator(mode="after")
    def _pattern_is_consistent(self) -> SemiStructuredPrune:
        if self.n >= self.m:
            raise ValueError(f"n:m needs n < m (got {self.n}:{self.m})")
        if self.layer_sparsity:
            raise ValueError("layer_sparsity does not apply to n:m masks (the pattern fixes it)")
        return self


def _prune_kind(value: Any) -> str:
    kind = (
        value.get("kind", "unstructured")
        if isinstance(value, dict)
        else getattr(value, "kind", None)
    )
    return kind if isinstance(kind, str) else "unstructured"


PruneStep = Annotated[
    Annotated[UnstructuredPrune, Tag("unstructured")]
    | Annotated[StructuredPrune, Tag("structured")]
    | Annotated[SemiStructuredPrune, Tag("n_m")],
    Discriminator(_prune_kind),
]
PruneConfig = UnstructuredPrune | StructuredPrune | SemiStructuredPrune
PRUNE_STEP_ADAPTER: TypeAdapter[PruneConfig] = TypeAdapter(PruneStep)


class _FamilyStudent(StrictModel):
    """A student built from a family (core.families). With a ratio, the width is sized
    so the student has that fraction of the teacher's parameters, or of its latency
    measured in ONNX Runtime at the job's batch size (depth and the other fields as
    given); without one it is built exactly as configured."""

    source: Literal["family"] = "family"
    parameter_ratio: float | None = Field(default=None, gt=0.0, lt=1.0)
    latency_ratio: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_ratio(self) -> _FamilyStudent:
        if self.parameter_ratio is not None and self.latency_ratio is not None:
            raise ValueError("give parameter_ratio or latency_ratio, not both")
        return self


class CnnStudent(_FamilyStudent, CnnFamily):
    pass


class MlpStudent(_FamilyStudent, MlpFamily):
    pass


class TransformerStudent(_FamilyStudent, TransformerFamily):
    pass


class AutoStudent(_FamilyStudent):
    """The family chosen by the input's rank: (C, H, W) -> cnn, (L, F) -> transformer,
    else mlp; its default architecture, sized by the ratio."""

    family: Literal["auto"] = "auto"


class StepInputStudent(StrictModel):
    """The model entering the step (after a prune step: the pruned teacher), trained
    further against the teacher: prune -> distill, the usual recovery recipe."""

    source: Literal["step_input"]


class UploadedStudent(StrictModel):
    """A student the user uploaded as ONNX (POST /v1/models), trained after conversion
    to PyTorch. It must take the teacher's inputs and produce its output's shape."""

    source: Literal["upload"]
    model_id: str = Field(min_length=1, max_length=64)


def _student_family(value: Any) -> str:
    family = (
        value.get("family", "auto") if isinstance(value, dict) else getattr(value, "family", None)
    )
    return family if isinstance(family, str) else "auto"


def _student_source(value: Any) -> str:
    source = (
        value.get("source", "family") if isinstance(value, dict) else getattr(value, "source", None)
    )
    return source if isinstance(source, str) else "family"


FamilyStudent = Annotated[
    Annotated[AutoStudent, Tag("auto")]
    | Annotated[CnnStudent, Tag("cnn")]
    | Annotated[MlpStudent, Tag("mlp")]
    | Annotated[TransformerStudent, Tag("transformer")],
    Discriminator(_student_family),
]
Student = Annotated[
    Annotated[FamilyStudent, Tag("family")]
    | Annotated[StepInputStudent, Tag("step_input")]
    | Annotated[UploadedStudent, Tag("upload")],
    Discriminator(_student_source),
]
FamilyStudentConfig = AutoStudent | CnnStudent | MlpStudent | TransformerStudent
StudentConfig = FamilyStudentConfig | StepInputStudent | UploadedStudent


def _default_student() -> AutoStudent:
    return AutoStudent(parameter_ratio=0.1)


class DistillStep(StrictModel):
    """Train a student to match the job's original model (the teacher, run in ONNX
    Runtime once over the training data) on `train_dataset_id`; labels, when present,
    are mixed in. Loss for classification: alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
    + (1 - alpha) * CE(y, s); regression and embeddings match the teacher's outputs by
    `output_loss`. The best epoch on the eval data is kept."""

    method: Literal["distill"]
    student: Student = Field(default_factory=_default_student)
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    # weight of the teacher's soft targets; 1 - alpha goes to the labels (when present)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    # how regression and embedding outputs are matched to the teacher's
    output_loss: Literal["mse", "cosine"] = "mse"
    # weight of intermediate-feature matching (step_input students only: their layers
    # correspond to the teacher's)
    feature_matching: float = Field(default=0.0, ge=0.0, le=100.0)
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    # stop after this many epochs without a better eval metric; None trains every epoch
    early_stopping_patience: int | None = Field(default=5, ge=1, le=1000)
    # also train the same student, from the same initial weights, on the labels alone:
    # the baseline that shows what distillation added (needs labels in the training data)
    compare_label_only: bool = False
    # None: the job's seed
    seed: int | None = None

    @model_validator(mode="after")
    def _feature_matching_needs_a_derived_student(self) -> DistillStep:
        if self.feature_matching > 0 and not isinstance(self.student, StepInputStudent):
            raise ValueError(
                "feature_matching needs a student derived from the teacher (student source "
                f"'step_input'), whose layers correspond to the teacher's; got source "
                f"{self.student.source!r}"
            )
        return self


CostName = Literal["parameters", "macs", "size_bytes", "latency_ms"]


class RangeNarrowing(StrictModel):
    """A sub-range of a family's declared range (both ends included)."""

    low: int | float
    high: int | float


# per field: a sub-range, a list of allowed options (choices), or one fixed value
SpaceNarrowing = RangeNarrowing | list[bool | int | float | str] | bool | int | float | str


class WeightedObjective(StrictModel):
    """Maximise O = alpha * P - beta * C / C_ref: P the task metric on the validation
    rows, C the trial's cost and C_ref the same cost of the job's original model (so
    beta = 0.1 trades 0.1 of metric for a model as costly as the original)."""

    kind: Literal["weighted"] = "weighted"
    alpha: float = Field(default=1.0, ge=0.0, le=1000.0)
    beta: float = Field(default=0.1, ge=0.0, le=1000.0)
    cost: CostName = "latency_ms"


class ConstrainedObjective(StrictModel):
    """Maximise the task metric among models within every limit set (latency in ONNX
    Runtime at the job's batch size). A trial over a limit is not trained."""

    kind: Literal["constrained"]
    max_latency_ms: float | None = Field(default=None, gt=0.0)
    max_params: int | None = Field(default=None, gt=0)
    max_size_bytes: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> ConstrainedObjective:
        if self.max_latency_ms is None and self.max_params is None and self.max_size_bytes is None:
            raise ValueError(
                "a constrained objective needs max_latency_ms, max_params or max_size_bytes"
            )
        return self


class ParetoObjective(StrictModel):
    """Maximise the metric and minimise every cost at once; the result is the Pareto
    front, and the step's model is the front's best metric within the job's targets."""

    kind: Literal["pareto"]
    costs: list[CostName] = Field(default=["latency_ms"], min_length=1, max_length=4)

    @field_validator("costs")
    @classmethod
    def _distinct(cls, costs: list[CostName]) -> list[CostName]:
        if len(set(costs)) != len(costs):
            raise ValueError(f"costs must be distinct, got {costs}")
        return costs


Objective = Annotated[
    WeightedObjective | ConstrainedObjective | ParetoObjective, Field(discriminator="kind")
]


class SearchStep(StrictModel):
    """Architecture search: sample architectures of a family (core.families), train each
    on `train_dataset_id` (optionally distilled from the job's original model), measure
    its cost in ONNX Runtime on the worker, and keep the best by `objective`. The step's
    model is the chosen architecture; the front and every trial are in its report."""

    method: Literal["search"]
    # "auto": by the input's rank: (C, H, W) -> cnn, (L, F) -> transformer, else mlp
    family: Literal["auto", "cnn", "mlp", "transformer"] = "auto"
    # per-field narrowing of the family's declared search ranges (needs a named family)
    space: dict[str, SpaceNarrowing] = Field(default_factory=dict, max_length=32)
    objective: Objective = Field(default_factory=WeightedObjective)
    algorithm: Literal["random", "evolution", "tpe", "nsga2"] = "tpe"
    # None: "median" for one objective, "none" for pareto (Optuna prunes single
    # objectives only)
    pruner: Literal["none", "median", "successive_halving"] | None = None
    # every trial is a row of the step's details (stored with the job): a few thousand at most
    max_trials: int = Field(default=20, ge=1, le=2_000)
    time_budget_s: float = Field(default=3600.0, gt=0.0, le=7 * 86400.0)
    # a trial still training after this long is stopped and counted as pruned (None: only
    # the time budget stops it); keeps one huge architecture from holding the search
    max_trial_s: float | None = Field(default=None, gt=0.0, le=7 * 86400.0)
    # evolution: the population (the most recent completed trials); nsga2: the
    # generation size; None: max_trials / 4 within 4..50
    population_size: int | None = Field(default=None, ge=2, le=1000)
    epochs: int = Field(default=5, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    # trials are scored on this share of the training rows, held out from training;
    # 0 scores them on the eval data (which then also scores the result: optimistic)
    validation_fraction: float = Field(default=0.2, ge=0.0, le=0.5)
    # train every trial against the job's original model (the distill step's loss)
    teacher: bool = False
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    distill_alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    # workers running trials of this search at once (the job's worker included)
    parallel_workers: int = Field(default=1, ge=1, le=64)
    # None: the job's seed
    seed: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SearchStep:
        if self.objective.kind == "pareto" and self.pruner not in (None, "none"):
            raise ValueError(
                f"pruner {self.pruner!r} needs a single objective; a pareto search trains "
                "every trial fully: set pruner to 'none'"
            )
        if self.space:
            if self.family == "auto":
                raise ValueError(
                    "narrowing the space needs a named family (cnn, mlp or transformer), "
                    "not 'auto'"
                )
            # imported here: core.search imports this module (its step's config)
            from core.search.space import narrow

            narrow(FAMILIES[self.family], self.space)
        return self

    def resolved_pruner(self) -> Literal["none", "median", "successive_halving"]:
        if self.pruner is not None:
            return self.pruner
        return "none" if self.objective.kind == "pareto" else "median"


class Goal(StrictModel):
    """What an `auto` job is for, within the metric target (targets.max_metric_drop or
    the default guard): a speed-up at every deployment batch size, a latency, a size, or
    simply the fastest model that keeps the metric."""

    speedup: float | None = Field(default=None, gt=1.0, le=1000.0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_size_bytes: int | None = Field(default=None, gt=0)
    fastest: bool = False

    @model_validator(mode="after")
    def _something(self) -> Goal:
        given = [self.speedup, self.max_latency_ms, self.max_size_bytes]
        if all(value is None for value in given) and not self.fastest:
            raise ValueError(
                "a goal needs speedup (e.g. 2 for twice as fast), max_latency_ms, "
                "max_size_bytes, or fastest: true"
            )
        return self

    @property
    def wants_size(self) -> bool:
        """A size goal alone: candidates are ranked by size, not speed."""
        return self.max_size_bytes is not None and self.speedup is None and not self.fastest


RecipeKind = Literal["graph", "quantize", "prune_distill", "student"]


class AutoStep(StrictModel):
    """Compression across methods toward a goal (core.recipe): graph rewrites that keep
    the numbers, quantization, structured pruning recovered by distillation from the
    original (then quantized), distillation into a smaller built-in student; cheap
    candidates first, successive halving of the ones that train, within a time budget.
    The step's model is the best candidate meeting the goal and the targets (else the
    closest); every candidate and the Pareto front are in its details."""

    method: Literal["auto"]
    goal: Goal = Field(default_factory=lambda: Goal(fastest=True))
    time_budget_s: float = Field(default=1800.0, gt=0.0, le=7 * 86400.0)
    # the candidate kinds to try; None: every kind that suits the model and the data
    kinds: list[RecipeKind] | None = Field(default=None, min_length=1)
    # channel shares structured pruning removes, one candidate each
    prune_ratios: list[float] = Field(default=[0.3, 0.5, 0.7], min_length=1, max_length=8)
    # successive halving: every training candidate gets short_epochs, the best `keep`
    # share of them long_epochs more
    short_epochs: int = Field(default=2, ge=1, le=100)
    long_epochs: int = Field(default=8, ge=0, le=1000)
    keep: float = Field(default=0.5, gt=0.0, le=1.0)
    # quantize what the other kinds produce, too
    quantize_results: bool = True
    seed: int | None = None
    # Workers that produce the candidates that train (their short rounds) at once: this
    # job's and parallel_workers - 1 helpers sent to its queue (core.recipe.helper).
    # Needs the recipe to be the job's first step, whose input the helpers can load.
    parallel_workers: int = Field(default=1, ge=1, le=16)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios(cls, ratios: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in ratios) or len(set(ratios)) != len(ratios):
            raise ValueError(f"prune_ratios must be distinct shares in (0, 1), got {ratios}")
        return ratios


def _step_method(value: Any) -> str | None:
    method = value.get("method") if isinstance(value, dict) else getattr(value, "method", None)
    return method if isinstance(method, str) else None


Step = Annotated[
    Annotated[QuantizeStep, Tag("quantize")]
    | Annotated[PruneStep, Tag("prune")]
    | Annotated[DistillStep, Tag("distill")]
    | Annotated[SearchStep, Tag("search")]
    | Annotated[AutoStep, Tag("auto")],
    Discriminator(_step_method),
]

QUANTIZE_STEP_ADAPTER: TypeAdapter[QuantizeConfig] = TypeAdapter(QuantizeStep)

# `models:/<name>/<version>` or `models:/<name>@<alias>`, as MLflow writes them. Stages
# (`models:/<name>/Production`) are deprecated in MLflow in favour of aliases: refused.
_MODEL_URI = re.compile(
    r"models:/(?P<name>[^/@\s][^/@]*)"
    r"(?:/(?P<version>[1-9][0-9]{0,9})|@(?P<alias>[A-Za-z0-9_-]{1,255}))"
)


@dataclass(frozen=True)
class RegistryModelRef:
    """A model version in an MLflow model registry, by number or by alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> RegistryModelRef:
    """The registered model and version (or alias) a `models:/` URI names; ValueError
    saying what to write for anything else."""
    match = _MODEL_URI.fullmatch(uri.strip())
    if match is None:
        raise ValueError(
            f"model_uri {uri!r} is not an MLflow model version: write models:/<name>/<version> "
            "(e.g. models:/digits/3) or models:/<name>@<alias> (e.g. models:/digits@champion)"
        )
    version = match.group("version")
    return RegistryModelRef(
        name=match.group("name"),
        version=int(version) if version is not None else None,
        alias=match.group("alias"),
    )


class Registration(StrictModel):
    """Register the job's final model as a new version of a registered model in the MLflow
    model registry (settings.mlflow_tracking_uri), with the job's metrics, verdict and
    manifest as the run's data. A failure to register leaves the job succeeded, with a
    `registry_failed` note."""

    kind: Literal["mlflow"] = "mlflow"
    # The registered model to add the version to (created when missing). None: the
    # source's registered model for a model_uri job, else "<uploaded file stem>-squeeze".
    name: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[^/@]+$")


class JobSpec(StrictModel):
    """A compression job: an uploaded model, data, steps in order, targets, device."""

    # The model: an upload (model_id), or a version in an MLflow model registry
    # (model_uri, "models:/name/3" or "models:/name@alias"). The worker downloads a
    # model_uri's ONNX file, stores it as an upload of the job's tenant, and writes that
    # upload's id into the stored spec's model_id (so retries and search helpers read the
    # same bytes); a submission gives one of the two.
    model_id: str | None = Field(default=None, min_length=1, max_length=64)
    model_uri: str | None = Field(default=None, min_length=1, max_length=1000)
    # Register the final model in MLflow (None: not registered). Not `register`: that
    # name is pydantic's (BaseModel.register).
    registry: Registration | None = None
    # Evaluation data is required: every metric is measured on it, and the result must run
    # on it before a job may succeed. Calibration falls back to the training data, else
    # to it (the record then says eval doubled as calibration).
    eval_dataset_id: str = Field(min_length=1, max_length=64)
    calibration_dataset_id: str | None = Field(default=None, max_length=64)
    # Training data for steps that train (QAT, and later pruning fine-tuning, distillation).
    train_dataset_id: str | None = Field(default=None, max_length=64)
    task: TaskSpec = Field(default_factory=TaskSpec)
    # the steps in order; none with a `goal`: one `auto` step toward it
    steps: list[Step] = Field(default_factory=list, max_length=16)
    # what an auto step works toward (also merged into `targets`, so the verdict checks it)
    goal: Goal | None = None
    targets: Targets = Field(default_factory=Targets)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The batch size a step's own timing uses (auto's candidates, a search's latency
    # cost, a student sized by latency) when it needs one; latency is judged at every
    # deployment batch size below.
    batch_size: int = Field(default=1, ge=1, le=4096)
    # The batch sizes the model will be served at: "not_slower" and max_latency_ms must
    # hold at each. None: 1 and batch_size.
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, min_length=1, max_length=8
    )
    # Where the model will run (core.runtimes.settings.DeploymentTarget: runtime, device,
    # threads, the runtime's defaults). Each target gets its own model and verdict: ONNX
    # Runtime targets the steps' result, OpenVINO targets the model entering the first
    # quantize step, converted and quantized with NNCF. Empty: ONNX Runtime on the
    # worker's device, measured with the worker's fixed threads and spinning off.
    deployment: list[DeploymentTarget] = Field(default_factory=list, max_length=4)
    # The share of eval rows held out from every choice a step makes; the verdict and
    # the reported metrics are measured on them only (core.evaluation). 0: no split.
    held_out_fraction: float = Field(default=0.5, ge=0.0, le=0.9)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    # A memory ceiling for this job on the worker, below the service's own (which wins
    # when it is lower); a job that needs more fails with `memory_limit_exceeded`.
    max_memory_bytes: int | None = Field(default=None, gt=0, le=2**50)

    @field_validator("model_uri")
    @classmethod
    def _model_uri_names_a_version(cls, value: str | None) -> str | None:
        return None if value is None else parse_model_uri(value).uri

    @model_validator(mode="after")
    def _a_model(self) -> JobSpec:
        if self.model_id is None and self.model_uri is None:
            raise ValueError(
                "give model_id (an uploaded model) or model_uri (an MLflow model version, "
                "models:/<name>/<version>)"
            )
        return self

    def registry_model(self) -> RegistryModelRef | None:
        """The MLflow model version the job's model comes from, if any."""
        return None if self.model_uri is None else parse_model_uri(self.model_uri)

    @model_validator(mode="after")
    def _steps_or_a_goal(self) -> JobSpec:
        if not self.steps:
            if self.goal is None:
                raise ValueError(
                    'give steps, or a goal for an auto job (e.g. "goal": {"speedup": 2})'
                )
            self.steps = [AutoStep(method="auto", goal=self.goal)]
        if self.goal is not None:
            goal = self.goal
            self.targets = self.targets.model_copy(
                update={
                    key: value
                    for key, value in {
                        "min_speedup": goal.speedup,
                        "max_latency_ms": goal.max_latency_ms,
                        "max_size_bytes": goal.max_size_bytes,
                    }.items()
                    if value is not None and getattr(self.targets, key) is None
                }
            )
        return self

    @model_validator(mode="after")
    def _batch_size_is_deployed(self) -> JobSpec:
        if self.batch_sizes is None:
            return self
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError(f"batch_sizes must be distinct, got {self.batch_sizes}")
        if "batch_size" not in self.model_fields_set:
            # the largest deployment batch is the one a step's own timing should see
            self.batch_size = max(self.batch_sizes)
        elif self.batch_size not in self.batch_sizes:
            raise ValueError(
                f"batch_size {self.batch_size} is not among batch_sizes {self.batch_sizes}: "
                "add it, or leave batch_size unset (it then defaults to the largest)"
            )
        return self

    @model_validator(mode="after")
    def _deployment_targets_fit_the_steps(self) -> JobSpec:
        names = [target.name + str(target.threads) for target in self.deployment]
        if len(set(names)) != len(names):
            raise ValueError("deployment names the same target twice")
        if any(target.runtime == "openvino" for target in self.deployment):
            methods = [step.method for step in self.steps]
            first = methods.index("quantize") if "quantize" in methods else len(methods)
            later = [m for m in methods[first:] if m != "quantize"]
            if later:
                raise ValueError(
                    "an openvino deployment target quantizes in OpenVINO the model entering "
                    f"the first quantize step, so quantize steps must come last (found "
                    f"{', '.join(later)} after one)"
                )
        return self

    def upstream_steps(self) -> int:
        """How many steps come before the first quantize step (shared by every target)."""
        methods = [step.method for step in self.steps]
        return methods.index("quantize") if "quantize" in methods else len(methods)

    def deployment_batch_sizes(self) -> list[int]:
        """The batch sizes latency is judged at, ascending."""
        return sorted(set(self.batch_sizes or [1, self.batch_size]))

    @model_validator(mode="after")
    def _training_steps_need_training_data(self) -> JobSpec:
        for index, step in enumerate(self.steps):
            if _trains(step) and self.train_dataset_id is None:
                hint = (
                    " (unlabelled data is enough: the teacher provides the targets)"
                    if isinstance(step, DistillStep)
                    else " (the search trains every trial on it)"
                    if isinstance(step, SearchStep)
                    else " (or fine_tune.epochs = 0 for pruning without fine-tuning)"
                )
                raise ValueError(
                    f"steps[{index}]: {step.method} trains the model: set train_dataset_id{hint}"
                )
        return self

    @model_validator(mode="after")
    def _training_feeds_samples_on_axis_0(self) -> JobSpec:
        task = self.task
        bound = sorted(
            name
            for name in task.inputs
            if not task.binding(name).splits_samples or task.binding(name).sample_axis
        )
        if not bound and task.output_sample_axis == 0:
            return self
        for index, step in enumerate(self.steps):
            if _runs_in_torch(step):
                what = (
                    f"task.inputs {bound} (sample axes, arrays fed whole, constants)"
                    if bound
                    else "task.output_sample_axis"
                )
                raise ValueError(
                    f"steps[{index}]: {step.method} runs the model in PyTorch, which squeeze "
                    f"does not yet feed through {what}: quantize such a model, or export it "
                    "with its samples on axis 0 of every input and output"
                )
        return self

    @model_validator(mode="after")
    def _label_only_baseline_needs_labels(self) -> JobSpec:
        for index, step in enumerate(self.steps):
            label_only = isinstance(step, DistillStep) and step.compare_label_only
            if label_only and self.task.kind not in ("classification", "regression"):
                raise ValueError(
                    f"steps[{index}]: compare_label_only needs labels the outputs are trained "
                    f"on (classification or regression), and {self.task.kind} tasks have "
                    "none: set it to false"
                )
        return self

    @model_validator(mode="after")
    def _search_without_labels_needs_the_teacher(self) -> JobSpec:
        for index, step in enumerate(self.steps):
            if isinstance(step, SearchStep) and not step.teacher and self.task.kind == "embedding":
                raise ValueError(
                    f"steps[{index}]: embedding tasks have no labels: a search trains its "
                    "trials against the original model's outputs, set teacher to true"
                )
        return self

    def student_model_ids(self) -> list[str]:
        """The uploaded models distill steps train as students (no duplicates; the job's
        own model may be among them)."""
        students = [
            step.student.model_id
            for step in self.steps
            if isinstance(step, DistillStep) and isinstance(step.student, UploadedStudent)
        ]
        return list(dict.fromkeys(students))

    def model_ids(self) -> list[str]:
        """Every uploaded model the job reads: its own model first, then the students."""
        own = [self.model_id] if self.model_id is not None else []
        return list(dict.fromkeys([*own, *self.student_model_ids()]))

    def dataset_ids(self) -> list[str]:
        ids = [self.eval_dataset_id, self.calibration_dataset_id, self.train_dataset_id]
        return list(dict.fromkeys(i for i in ids if i))


def _trains(step: Step) -> bool:
    """Whether the step trains the model in PyTorch (and so needs training data)."""
    return (
        getattr(step, "mode", None) == "qat"
        or (isinstance(step, _PruneBase) and step.fine_tune.epochs > 0)
        or isinstance(step, DistillStep | SearchStep)
    )


def _runs_in_torch(step: Step) -> bool:
    """Whether the step converts the model to PyTorch (every prune, distill and search
    step, and QAT)."""
    return getattr(step, "mode", None) == "qat" or isinstance(
        step, _PruneBase | DistillStep | SearchStep
    )


def check_submission(spec: JobSpec) -> None:
    """Rules a new submission must follow on top of the spec's own validation; raises
    ValueError saying what to write instead.

    Kept out of JobSpec's validators on purpose: jobs stored before a rule existed must
    still be read back (the API answers them, the worker runs them).
    """
    if spec.model_id is not None and spec.model_uri is not None:
        raise ValueError(
            "give model_id (an uploaded model) or model_uri (an MLflow model version), not both"
        )
    drop = spec.targets.max_metric_drop
    if drop is not None and drop >= 1:
        # Every metric here lives on a 0..1 scale (accuracy, agreement, cosine), and a
        # relative drop of 1 is all of it: 1 is a typo for one point, never a limit.
        raise ValueError(
            f"targets.max_metric_drop {drop:g} would allow a drop of {drop * 100:g} points, "
            "i.e. any result: one point is 0.01 (the CLI also takes 1%); to accept any drop, "
            "leave max_metric_drop unset and set targets.metric_guard to false"
        )
    if spec.train_dataset_id is not None and spec.train_dataset_id == spec.eval_dataset_id:
        raise ValueError(
            "train_dataset_id and eval_dataset_id name the same dataset: a model trained on "
            "its eval rows scores itself; upload separate training and eval splits"
        )
