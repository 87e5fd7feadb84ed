"""The job spec: what the user asks for, validated at the edge.

Steps are a discriminated union on `method`; adding a method means adding its config
here and registering its function in `core.registry`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class QuantizeStep(StrictModel):
    method: Literal["quantize"]
    mode: Literal["dynamic", "static", "fp16"] = "static"
    per_channel: bool = True
    reduce_range: bool = False
    # Op types to quantize; None lets the engine choose for the mode (dynamic mode leaves
    # Conv out: ConvInteger is slow on ONNX Runtime's CPU provider).
    op_types: list[str] | None = None
    calibration_method: Literal["minmax"] = "minmax"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    calibration_batch_size: int = Field(default=32, ge=1, le=4096)


Step = Annotated[QuantizeStep, Field(discriminator="method")]


class JobSpec(StrictModel):
    """A compression job: an uploaded model, data, steps in order, targets, device."""

    model_id: str = Field(min_length=1, max_length=64)
    # Evaluation data is required: every metric is measured on it, and the result must run
    # on it before a job may succeed. Calibration falls back to it when not given.
    eval_dataset_id: str = Field(min_length=1, max_length=64)
    calibration_dataset_id: str | None = Field(default=None, max_length=64)
    task: TaskSpec = Field(default_factory=TaskSpec)
    steps: list[Step] = Field(min_length=1, max_length=16)
    targets: Targets = Field(default_factory=Targets)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Latency is measured at batch 1 and at this batch size.
    batch_size: int = Field(default=1, ge=1, le=4096)
    seed: int = 0

    def dataset_ids(self) -> list[str]:
        ids = [self.eval_dataset_id, self.calibration_dataset_id]
        return list(dict.fromkeys(i for i in ids if i))
