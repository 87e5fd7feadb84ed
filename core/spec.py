"""The job spec: what the user asks for, validated at the edge.

Steps are a discriminated union on `method`; adding a method means adding its config
here and registering its function in `core.registry`.
"""

from __future__ import annotations

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


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo in a spec must not be silently ignored."""

    # NaN/Infinity are refused: they are not JSON, and PostgreSQL's JSON column rejects them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TaskSpec(StrictModel):
    """How to feed the model and how to score it."""

    kind: Literal["classification", "regression", "embedding"] = "classification"
    # Model input name -> array name in the .npz; inputs not listed use their own name.
    inputs: dict[str, str] = Field(default_factory=dict)
    # The model output the metric reads; default: the first output.
    output: str | None = None
    # Array holding the labels (classification: class indices). When absent from the eval
    # data, the metric is agreement with the original model's outputs.
    labels: str = "label"


class Targets(StrictModel):
    """Limits the final model must meet; each is checked against measured values."""

    # Metric drop vs the original: absolute in metric units (0.01 = one accuracy point),
    # or relative to the original's metric when `metric_drop_mode` is "relative".
    max_metric_drop: float | None = Field(default=None, ge=0)
    metric_drop_mode: Literal["absolute", "relative"] = "absolute"
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_size_bytes: int | None = Field(default=None, gt=0)
    # A final model slower than the original at the job's batch size misses the implicit
    # "not slower" target unless the user allows it (e.g. FP16 for size alone).
    allow_slower: bool = False


class _QuantizeBase(StrictModel):
    method: Literal["quantize"]


class _Int8Options(StrictModel):
    per_channel: bool = True
    reduce_range: bool = False
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


def _step_method(value: Any) -> str | None:
    method = value.get("method") if isinstance(value, dict) else getattr(value, "method", None)
    return method if isinstance(method, str) else None


Step = Annotated[
    Annotated[QuantizeStep, Tag("quantize")] | Annotated[PruneStep, Tag("prune")],
    Discriminator(_step_method),
]

QUANTIZE_STEP_ADAPTER: TypeAdapter[QuantizeConfig] = TypeAdapter(QuantizeStep)


class JobSpec(StrictModel):
    """A compression job: an uploaded model, data, steps in order, targets, device."""

    model_id: str = Field(min_length=1, max_length=64)
    # Evaluation data is required: every metric is measured on it, and the result must run
    # on it before a job may succeed. Calibration falls back to it when not given.
    eval_dataset_id: str = Field(min_length=1, max_length=64)
    calibration_dataset_id: str | None = Field(default=None, max_length=64)
    # Training data for steps that train (QAT, and later pruning fine-tuning, distillation).
    train_dataset_id: str | None = Field(default=None, max_length=64)
    task: TaskSpec = Field(default_factory=TaskSpec)
    steps: list[Step] = Field(min_length=1, max_length=16)
    targets: Targets = Field(default_factory=Targets)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Latency is measured at batch 1 and at this batch size.
    batch_size: int = Field(default=1, ge=1, le=4096)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _training_steps_need_training_data(self) -> JobSpec:
        for index, step in enumerate(self.steps):
            trains = getattr(step, "mode", None) == "qat" or (
                isinstance(step, _PruneBase) and step.fine_tune.epochs > 0
            )
            if trains and self.train_dataset_id is None:
                raise ValueError(
                    f"steps[{index}]: {step.method} trains the model: set train_dataset_id "
                    "(or fine_tune.epochs = 0 for pruning without fine-tuning)"
                )
        return self

    def dataset_ids(self) -> list[str]:
        ids = [self.eval_dataset_id, self.calibration_dataset_id, self.train_dataset_id]
        return list(dict.fromkeys(i for i in ids if i))
